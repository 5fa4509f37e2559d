#!/usr/bin/env python3
"""A node that checks the answers of Maelstrom's services. Before its init it
asks lin-tso for a timestamp, as the node named by its first argument (default
n0); after init it runs a fixed script against lin-tso, seq-kv, lww-kv and
lin-kv, one request at a time, and writes "PROBE OK" or "PROBE FAILED: ..." to
stderr. Meanwhile it serves the lin-kv workload by forwarding to lin-kv, so the
run itself is valid. Standard library only.
"""

import json
import sys

node_id = sys.argv[1] if len(sys.argv) > 1 else "n0"
next_msg_id = 0
pending = {}  # msg_id -> ("client", request) or ("probe", step) or ("early", None)
seen = {}
early_ts = []


def send(dest, body):
    sys.stdout.write(json.dumps({"src": node_id, "dest": dest, "body": body}) + "\n")
    sys.stdout.flush()


def rpc(dest, body, what):
    global next_msg_id
    next_msg_id += 1
    body = dict(body, msg_id=next_msg_id)
    pending[next_msg_id] = what
    send(dest, body)


def error(code):
    return lambda r: r.get("type") == "error" and r.get("code") == code


def value(v):
    return lambda r: r.get("type") == "read_ok" and r.get("value") == v


def ok(kind):
    return lambda r: r.get("type") == kind


def first_ts(r):
    seen["ts"] = r.get("ts")
    return r.get("type") == "ts_ok" and isinstance(r.get("ts"), int)


def later_ts(r):
    return r.get("type") == "ts_ok" and r.get("ts", -1) > seen["ts"]


STEPS = [
    ("lin-tso", {"type": "ts"}, first_ts),
    ("lin-tso", {"type": "ts"}, later_ts),
    ("seq-kv", {"type": "read", "key": "p"}, error(20)),
    ("seq-kv", {"type": "cas", "key": "p", "from": 1, "to": 2}, error(20)),
    ("seq-kv", {"type": "cas", "key": "p", "from": 1, "to": 2, "create_if_not_exists": True}, ok("cas_ok")),
    ("seq-kv", {"type": "read", "key": "p"}, value(2)),
    ("seq-kv", {"type": "write", "key": "p", "value": 3}, ok("write_ok")),
    ("seq-kv", {"type": "cas", "key": "p", "from": 2, "to": 4}, error(22)),
    ("seq-kv", {"type": "read", "key": "p"}, value(3)),
    ("seq-kv", {"type": "frob"}, error(10)),
    ("lin-tso", {"type": "read", "key": "p"}, error(10)),
    ("lww-kv", {"type": "cas", "key": "q", "from": 0, "to": 1, "create_if_not_exists": True}, error(20)),
    ("lin-kv", {"type": "cas", "key": "probe", "from": 0, "to": 1, "create_if_not_exists": True}, ok("cas_ok")),
    ("lin-kv", {"type": "read", "key": "probe"}, value(1)),
]


def probe(step):
    if step < len(STEPS):
        dest, body, _ = STEPS[step]
        rpc(dest, body, ("probe", step))
    elif early_ts:
        print("PROBE OK", file=sys.stderr, flush=True)
    else:
        print("PROBE FAILED: no answer to the ts sent before init", file=sys.stderr, flush=True)


def handle(msg):
    body = msg["body"]
    kind = body.get("type")
    if kind == "init":
        send(msg["src"], {"type": "init_ok", "in_reply_to": body["msg_id"]})
        probe(0)
    elif kind in ("read", "write", "cas"):
        rpc("lin-kv", {k: v for k, v in body.items() if k != "msg_id"}, ("client", msg))
    elif body.get("in_reply_to") in pending:
        what, arg = pending.pop(body["in_reply_to"])
        if what == "client":
            send(arg["src"], dict(body, in_reply_to=arg["body"]["msg_id"]))
        elif what == "early":
            early_ts.append(body)
        elif STEPS[arg][2](body):
            probe(arg + 1)
        else:
            print("PROBE FAILED: step %d %s got %s" % (arg, json.dumps(STEPS[arg][:2]), json.dumps(body)),
                  file=sys.stderr, flush=True)


rpc("lin-tso", {"type": "ts"}, ("early", None))
for line in sys.stdin:
    handle(json.loads(line))

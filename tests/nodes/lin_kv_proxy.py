#!/usr/bin/env python3
"""A key-value node that keeps no state of its own: it forwards every client
read, write and cas to a Maelstrom key-value service (lin-kv unless another is
named as the first argument) and relays the service's answer to the client, as
Maelstrom's tutorial proxy does. Standard library only.

Through lin-kv the node is linearizable; through seq-kv or lww-kv it is not,
and a checker should say so.
"""

import json
import sys

SERVICE = sys.argv[1] if len(sys.argv) > 1 else "lin-kv"

node_id = None
next_msg_id = 0
pending = {}  # our msg_id -> the client's request it forwards


def send(dest, body):
    line = json.dumps({"src": node_id, "dest": dest, "body": body})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def handle(msg):
    global node_id, next_msg_id
    body = msg["body"]
    kind = body.get("type")
    if kind == "init":
        node_id = body["node_id"]
        send(msg["src"], {"type": "init_ok", "in_reply_to": body["msg_id"]})
    elif kind in ("read", "write", "cas"):
        next_msg_id += 1
        forward = dict(body)
        forward["msg_id"] = next_msg_id
        pending[next_msg_id] = msg
        send(SERVICE, forward)
    elif msg["src"] == SERVICE and body.get("in_reply_to") in pending:
        request = pending.pop(body["in_reply_to"])
        answer = dict(body)
        answer["in_reply_to"] = request["body"]["msg_id"]
        send(request["src"], answer)
    else:
        print("ignored: %s" % json.dumps(msg), file=sys.stderr, flush=True)


for line in sys.stdin:
    handle(json.loads(line))

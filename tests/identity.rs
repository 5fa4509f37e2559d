//! A node's identity, checked where it is given: `oncekv serve` refuses at start
//! any `--peers`/`--listen`/`--id`/`--data-dir` that would let one process count
//! as two voters or as another node, and a Maelstrom node refuses a second `init`
//! that differs from the first.

mod support;
mod support_tcp;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oncekv::tcp::{Client, ClientOptions};
use serde_json::{Value, json};
use support_tcp::{free_port, test_dir};

/// Runs `oncekv serve` with `args` and waits (with a deadline) for it to exit;
/// returns its status code and stderr. Panics if it is still running, after
/// killing it: every case here must be refused at start.
fn serve_refused(args: &[&str], dir: &Path) -> (i32, String) {
    let stderr = dir.join("serve-stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn oncekv serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oncekv serve {args:?} was not refused: it kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    eprintln!("serve {args:?}: {status}: {text}");
    (status.code().unwrap_or(-1), text)
}

/// Every configuration that let a node elect itself alone, or run as another
/// node, is refused at start with a message naming the problem.
#[test]
fn serve_refuses_a_node_that_could_count_twice_or_be_another() {
    let root = test_dir("identity-refused");
    let [a, b, c] = [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let data = root.join("n1");
    let data_s = data.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Two members at one address: one process would answer for both.
        (
            vec![
                "--id".into(),
                "n1".into(),
                "--listen".into(),
                a.clone(),
                "--peers".into(),
                format!("n1={a},n2={a},n3={b}"),
            ],
            "n1 and n2 have the same address",
        ),
        (
            vec![
                "--id".into(),
                "n1".into(),
                "--listen".into(),
                a.clone(),
                "--peers".into(),
                format!("n1={a},n2=localhost:{},n3={b}", &a[10..]),
            ],
            "same address",
        ),
        // Listening on another member's address.
        (
            vec![
                "--id".into(),
                "n1".into(),
                "--listen".into(),
                b.clone(),
                "--peers".into(),
                format!("n1={a},n2={b},n3={c}"),
            ],
            "is not n1's address in --peers",
        ),
        // Not a member.
        (
            vec![
                "--id".into(),
                "n4".into(),
                "--listen".into(),
                a.clone(),
                "--peers".into(),
                format!("n1={a},n2={b},n3={c}"),
            ],
            "--id n4 is not in --peers",
        ),
        // Node 3 under another spelling.
        (
            vec![
                "--id".into(),
                "n03".into(),
                "--listen".into(),
                c.clone(),
                "--peers".into(),
                format!("n1={a},n2={b},n3={c}"),
            ],
            "leading zero",
        ),
        (
            vec![
                "--id".into(),
                "x3".into(),
                "--listen".into(),
                c.clone(),
                "--peers".into(),
                format!("n1={a},n2={b},n3={c}"),
            ],
            "--id x3 is node 3, which --peers names n3",
        ),
    ];
    for (args, expected) in cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--data-dir", data_s]);
        let (code, text) = serve_refused(&args, &root);
        assert_ne!(code, 0, "{args:?}");
        assert!(text.contains(expected), "{args:?}: {text:?}");
    }
    assert!(
        !data.exists(),
        "nothing is created for refused arguments: {}",
        data.display()
    );
}

async fn answers_status(addr: &str) -> Option<oncekv::node::NodeStatus> {
    let mut opts = ClientOptions::new(vec![addr.to_string()]);
    opts.deadline = Duration::from_secs(1);
    Client::new(opts).status_of(0).await.ok()
}

/// A data dir remembers its node's name: node 3's dir refuses `x3` (same id),
/// and a dir inside another node's dir is refused; a wildcard `--listen` on the
/// node's own port is accepted (nodes on several machines need it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_remembers_its_node_name() {
    let root = test_dir("identity-name");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = root.join("n3");
    let dir_s = dir.to_str().unwrap().to_string();
    let wildcard = format!("0.0.0.0:{port}");
    let mut n3 = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["serve", "--id", "n3", "--listen", &wildcard])
        .args(["--peers", &format!("n3={addr}"), "--data-dir", &dir_s])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn n3");
    let deadline = Instant::now() + Duration::from_secs(20);
    while answers_status(&addr).await.is_none() {
        assert!(Instant::now() < deadline, "n3 never answered status");
        assert!(n3.try_wait().unwrap().is_none(), "n3 exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n3.kill().unwrap();
    n3.wait().unwrap();

    let (code, text) = serve_refused(
        &[
            "--id",
            "x3",
            "--listen",
            &addr,
            "--peers",
            &format!("x3={addr}"),
            "--data-dir",
            &dir_s,
        ],
        &root,
    );
    assert_ne!(code, 0);
    assert!(text.contains("data dir of node n3, not of x3"), "{text:?}");

    // --listen and --peers moved together: the log still says where n3 is.
    let moved = format!("127.0.0.1:{}", free_port());
    let (code, text) = serve_refused(
        &[
            "--id",
            "n3",
            "--listen",
            &moved,
            "--peers",
            &format!("n3={moved}"),
            "--data-dir",
            &dir_s,
        ],
        &root,
    );
    assert_ne!(code, 0);
    assert!(
        text.contains(&format!("this node's log records it as n3@{addr}")),
        "{text:?}"
    );

    let inner = dir.join("wal").join("x");
    let n5 = format!("127.0.0.1:{}", free_port());
    let (code, text) = serve_refused(
        &[
            "--id",
            "n5",
            "--listen",
            &n5,
            "--peers",
            &format!("n5={n5}"),
            "--data-dir",
            inner.to_str().unwrap(),
        ],
        &root,
    );
    assert_ne!(code, 0);
    assert!(
        text.contains("inside the data dir of another node"),
        "{text:?}"
    );
}

fn maelstrom(lines: &[Value]) -> Vec<Value> {
    let input: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    support::run_script(&input)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn init(msg_id: u64, node_id: &str, node_ids: &[&str]) -> Value {
    json!({"src":"c0","dest":node_id,"body":{"type":"init","msg_id":msg_id,
        "node_id":node_id,"node_ids":node_ids}})
}

/// A second `init` that differs from the first is refused (definite error 12
/// naming what the node is), not acknowledged and ignored; an identical one is
/// acknowledged again; the node keeps serving as first initialized.
#[test]
fn a_second_different_init_is_refused() {
    let out = maelstrom(&[
        init(1, "n1", &["n1"]),
        init(2, "n1", &["n1", "n2", "n3"]),
        // Addressed to this node, naming another: refused as a different init
        // (one addressed to n2 would be refused as misdelivered).
        json!({"src":"c0","dest":"n1","body":{"type":"init","msg_id":3,
            "node_id":"n2","node_ids":["n1"]}}),
        init(4, "n1", &["n1"]),
        json!({"src":"c1","dest":"n1","body":{"type":"write","msg_id":5,"key":"k","value":1}}),
    ]);
    let by_id = |id: u64| {
        out.iter()
            .find(|l| l["body"]["in_reply_to"] == id)
            .unwrap_or_else(|| panic!("no reply to {id}: {out:?}"))["body"]
            .clone()
    };
    assert_eq!(by_id(1)["type"], "init_ok");
    for id in [2, 3] {
        let b = by_id(id);
        assert_eq!(b["code"], 12, "{b}");
        let text = b["text"].as_str().unwrap();
        assert!(text.contains("already initialized as n1"), "{text}");
        assert!(text.contains("[\"n1\"]"), "{text}");
    }
    assert_eq!(by_id(4)["type"], "init_ok");
    assert_eq!(by_id(5)["type"], "write_ok");
}

/// An `init` naming one node twice is refused: that node would count as two voters.
#[test]
fn an_init_naming_a_node_twice_is_refused() {
    let out = maelstrom(&[init(1, "n1", &["n1", "n1", "n2"])]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["body"]["code"], 12, "{out:?}");
    let text = out[0]["body"]["text"].as_str().unwrap();
    assert!(text.contains("n1 appears twice"), "{text}");
}

/// A node that ran, lost its data dir and is started again empty under its old
/// name (with `--join` or without) is refused while the leader knows it
/// confirmed entries:
/// started empty it would have forgotten its vote and could vote twice in a term.
/// How node `i`, just spawned, ended: it must end (refuse to start) within
/// 20 s.
async fn refused_start(
    cluster: &mut support_tcp::TestCluster,
    i: usize,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let child = cluster.nodes[i].child.as_mut().expect("child");
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the node started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cluster.nodes[i].child = None;
    status
}

/// A 3-node cluster named `name` that has written one key, with its leader, a
/// follower whose confirmation of it the leader has, a client, and the index
/// the leader has confirmed by that follower.
struct Written {
    cluster: support_tcp::TestCluster,
    leader: usize,
    follower: usize,
    client: Client,
    confirmed: u64,
}

async fn cluster_with_a_write(name: &str) -> Written {
    let cluster = support_tcp::TestCluster::start(name, 3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    client.write(json!("k"), json!(1)).await.expect("write");
    let follower = (leader + 1) % 3;
    let confirmed = wait_confirmed(&cluster, leader, (follower + 1) as u64, 1).await;
    Written {
        cluster,
        leader,
        follower,
        client,
        confirmed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_is_not_started_empty() {
    let Written {
        mut cluster,
        follower: lost,
        ..
    } = cluster_with_a_write("identity-lost").await;
    cluster.kill(lost);
    let dir = cluster.nodes[lost].dir.clone();
    std::fs::remove_dir_all(&dir).expect("lose the data dir");
    // Started as it was, then with `--join` (what the advice's last words
    // might suggest to a hurried operator): refused both times.
    let peers = cluster.peers.clone();
    for join in [false, true] {
        cluster.spawn(lost, &peers, join);
        let status = refused_start(&mut cluster, lost).await;
        assert!(!status.success(), "join {join}: {status}");
    }
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let said = "has run with a data dir holding its log";
    assert_eq!(text.matches(said).count(), 2, "{text}");
    // A mistyped dir looks the same from here: the first advice is the right dir,
    // and the dir the node was given is named.
    assert!(text.contains("a mistyped --data-dir"), "{text}");
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert!(
        !dir.join("oncekv.meta").exists(),
        "the refused dir stays empty, so a retry is refused again"
    );
}

/// Copies the tree at `from` to `to` (files and directories).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Waits until `leader` has log entries up to `at_least` confirmed by node
/// `id`; returns how far.
async fn wait_confirmed(
    c: &support_tcp::TestCluster,
    leader: usize,
    id: u64,
    at_least: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let confirmed = c
            .status(leader)
            .await
            .and_then(|s| s.replicated?.get(&id).copied().flatten());
        if let Some(i) = confirmed
            && i >= at_least
        {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never had {at_least} confirmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node's data dir put back from an old copy holds less of its log than it
/// acknowledged since: while the leader that had those entries confirmed
/// leads, the node refuses to start on it (it would have forgotten them and
/// could help elect a leader without them), each time it is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_restored_from_an_old_copy_is_refused() {
    let Written {
        mut cluster,
        leader,
        follower: old,
        mut client,
        confirmed: before,
    } = cluster_with_a_write("identity-restored").await;
    let id = (old + 1) as u64;
    cluster.kill(old);
    let dir = cluster.nodes[old].dir.clone();
    let copy = dir.with_extension("copy");
    copy_tree(&dir, &copy);
    let peers = cluster.peers.clone();
    cluster.spawn(old, &peers, false);
    for i in 0..20 {
        client.write(json!("k"), json!(i)).await.expect("write");
    }
    wait_confirmed(&cluster, leader, id, before + 20).await;
    cluster.kill(old);
    std::fs::remove_dir_all(&dir).expect("remove");
    copy_tree(&copy, &dir);
    // Refused, and again on a second try: the refusal changes nothing.
    for attempt in 0..2 {
        cluster.spawn(old, &peers, false);
        let status = refused_start(&mut cluster, old).await;
        assert_eq!(status.code(), Some(1), "attempt {attempt}: {status}");
    }
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert_eq!(text.matches("older than what").count(), 2, "{text}");
    // The cluster serves on without it.
    client
        .write(json!("k"), json!("after"))
        .await
        .expect("write");
}

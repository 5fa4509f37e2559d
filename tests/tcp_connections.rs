//! Connection budgets and deadlines, in the real binary: silent sockets and
//! idle clients cannot lock out new clients or peers (a connection is
//! unclassified until its first line, then counted as a client or a peer, each
//! with its own budget), a silent connection is closed after the first-line
//! deadline, an idle one after the idle timeout, and never one with a request in
//! flight. Requests pipelined on one connection are answered in order.

mod support_tcp;

use std::time::{Duration, Instant};

use oncekv::protocol::Reply;
use oncekv::tcp::{Client, ClientOptions};
use serde_json::{Value, json};
use support_tcp::TestCluster;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends `body` (with `msg_id`) on `conn`.
async fn send(conn: &mut BufReader<TcpStream>, body: Value, msg_id: u64) {
    let mut body = body;
    body["msg_id"] = json!(msg_id);
    let line = json!({"src": "c9", "dest": "", "body": body}).to_string() + "\n";
    conn.get_mut()
        .write_all(line.as_bytes())
        .await
        .expect("write");
}

/// The next line on `conn` as a body, or `None` once the server closed it.
async fn next_body(conn: &mut BufReader<TcpStream>, within: Duration) -> Option<Value> {
    let mut line = String::new();
    let n = tokio::time::timeout(within, conn.read_line(&mut line))
        .await
        .expect("a line or the end in time")
        .unwrap_or(0);
    (n > 0).then(|| serde_json::from_str::<Value>(&line).expect("json")["body"].clone())
}

/// Waits until the server closes `conn` (reads return end of stream).
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether the server closed `conn` already (or closes it within a moment).
async fn is_closed(conn: &mut TcpStream) -> bool {
    closed_within(conn, Duration::from_millis(20)).await
}

fn options(addr: &str) -> ClientOptions {
    let mut o = ClientOptions::new(vec![addr.to_string()]);
    o.deadline = Duration::from_secs(20);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_lock_out_neither_clients_nor_peers() {
    let key = "conn-budget-key-0123";
    let env = [
        (oncekv::tcp::CLUSTER_KEY_VAR, key),
        (oncekv::tcp::CLIENT_CONNECTIONS_MAX_VAR, "4"),
        (oncekv::tcp::PEER_CONNECTIONS_MAX_VAR, "4"),
        (oncekv::tcp::UNCLASSIFIED_CONNECTIONS_MAX_VAR, "8"),
        // Silent sockets are not closed by the deadline during the test: only
        // the budgets protect the newcomers.
        (oncekv::tcp::FIRST_LINE_TIMEOUT_MS_VAR, "120000"),
    ];
    let mut cluster = TestCluster::start("conn-budgets", 3, &env);
    // The follower `f` is left alone, and the old leader `p` comes back later to
    // win its vote (a node that led before the kill would restart still counting
    // itself leader of its term and refuse that vote for its whole, long, election
    // timeout). `q` stays down.
    let p = cluster.wait_leader(Duration::from_secs(20)).await;
    let f = (p + 1) % 3;
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    assert_eq!(
        client.write(json!("k"), json!(1)).await.expect("write"),
        Reply::WriteOk
    );
    drop(client);
    // n1 alone, unable to campaign for the rest of the test: the cluster can only
    // commit again once n2, started later, reaches n1 as a peer.
    cluster.kill_together(&[0, 1, 2]);
    cluster.restart_with(
        f,
        &[
            ("ONCEKV_ELECTION_TIMEOUT_MIN_MS", "600000"),
            ("ONCEKV_ELECTION_TIMEOUT_MAX_MS", "900000"),
        ],
    );
    let n1 = cluster.nodes[f].addr.clone();
    cluster
        .wait_for("n1 to serve", Duration::from_secs(20), || async {
            cluster.status(f).await.is_some()
        })
        .await;

    // 1. Far more silent sockets than every budget together.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(&n1).await.expect("connect"));
    }
    // A new client is still served: its connection pushes out the oldest silent one.
    let mut c = Client::new(options(&n1));
    let s = c.status_of(0).await.expect("a new client is served");
    assert_eq!(s.name, cluster.nodes[f].name);
    drop(c);
    // All but the newest 8 (the unclassified budget) were closed to make room.
    let mut open = 0;
    for conn in &mut silent {
        if !closed_within(conn, Duration::from_millis(200)).await {
            open += 1;
        }
    }
    assert!(open <= 8, "{open} silent sockets still open, budget 8");

    // 2. The client budget full of idle clients: one more gets a definite
    // refusal that names the limit and its setting, and is closed.
    let mut idle = Vec::new();
    for i in 0..4 {
        let mut conn = BufReader::new(TcpStream::connect(&n1).await.expect("connect"));
        send(&mut conn, json!({"type": "status"}), 1).await;
        let b = next_body(&mut conn, Duration::from_secs(10)).await;
        assert_eq!(
            b.expect("a reply")["type"],
            json!("status_ok"),
            "client {i}"
        );
        idle.push(conn);
    }
    let mut extra = BufReader::new(TcpStream::connect(&n1).await.expect("connect"));
    send(&mut extra, json!({"type": "read", "key": "k"}), 7).await;
    let b = next_body(&mut extra, Duration::from_secs(10))
        .await
        .expect("a refusal");
    assert_eq!(b["code"], json!(11), "{b}");
    assert_eq!(b["in_reply_to"], json!(7), "{b}");
    let text = b["text"].as_str().expect("text");
    assert!(
        text.contains(
            "too many client connections (limit 4, setting ONCEKV_CLIENT_CONNECTIONS_MAX)"
        ),
        "{text}"
    );
    assert!(closed_within(extra.get_mut(), Duration::from_secs(10)).await);
    // And more silent sockets keep arriving.
    for _ in 0..20 {
        silent.push(TcpStream::connect(&n1).await.expect("connect"));
    }

    // 3. A peer still gets in: n2 must win n1's vote and n1's acks (n3 is down),
    // both over n2's connection to n1.
    cluster.restart(p);
    let n2 = cluster.nodes[p].addr.clone();
    let mut c2 = Client::new(options(&n2));
    c2.open_session().await.expect("session through n2");
    let r = c2.write(json!("k"), json!(2)).await.expect("write");
    assert_eq!(r, Reply::WriteOk, "a write committed by n2 and n1");
    let s = cluster.status(p).await.expect("n2 status");
    assert_eq!(s.role, oncekv::node::Role::Leader);

    // 4. Idle clients gone, a new client is served again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = Client::new(options(&n1));
    while c.status_of(0).await.is_err() {
        assert!(Instant::now() < deadline, "n1 serves no client again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_but_not_one_with_a_request_in_flight() {
    let env = [
        (oncekv::tcp::FIRST_LINE_TIMEOUT_MS_VAR, "300"),
        (oncekv::tcp::IDLE_TIMEOUT_MS_VAR, "600"),
        // A write without a quorum waits this long for its commit: far longer
        // than the idle timeout.
        ("ONCEKV_REQUEST_TIMEOUT_MS", "3000"),
    ];
    let mut cluster = TestCluster::start("conn-deadlines", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let addr = cluster.nodes[leader].addr.clone();

    // A connection that never sends a line is closed after the first-line deadline.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a silent connection stays open"
    );
    // A client that got its answer and went quiet is closed after the idle timeout.
    let mut quiet = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
    send(&mut quiet, json!({"type": "status"}), 1).await;
    let b = next_body(&mut quiet, Duration::from_secs(10)).await;
    assert_eq!(b.expect("reply")["type"], json!("status_ok"));
    assert!(
        closed_within(quiet.get_mut(), Duration::from_secs(20)).await,
        "an idle connection stays open"
    );

    // A write that cannot commit (the followers are down) is in flight until the
    // node's request timeout: the connection is not idle meanwhile, so its answer
    // arrives.
    for i in 0..cluster.nodes.len() {
        if i != leader {
            cluster.kill(i);
        }
    }
    let mut busy = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
    let started = Instant::now();
    send(
        &mut busy,
        json!({"type": "write", "key": "k", "value": 1}),
        5,
    )
    .await;
    let b = next_body(&mut busy, Duration::from_secs(30))
        .await
        .expect("the answer to the write in flight, not a closed connection");
    assert_eq!(b["in_reply_to"], json!(5), "{b}");
    eprintln!("answer after {:?}: {b}", started.elapsed());
    // Nothing in flight any more: now it is idle, and closed.
    assert!(closed_within(busy.get_mut(), Duration::from_secs(20)).await);
    assert!(is_closed(busy.get_mut()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_replies_is_closed() {
    let cluster = TestCluster::start("conn-no-reader", 1, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let conn = TcpStream::connect(&cluster.nodes[0].addr)
        .await
        .expect("connect");
    let (mut r, mut w) = conn.into_split();
    // Far more replies than the socket buffers and the reply queue hold; the
    // writes block once the node stops reading, and fail once it closes.
    let sender = tokio::spawn(async move {
        let line =
            r#"{"src":"c1","dest":"","body":{"type":"status","msg_id":1}}"#.to_string() + "\n";
        let lines = line.repeat(1_000);
        for _ in 0..100 {
            if w.write_all(lines.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    // The node's writer gives up on a reader that reads nothing...
    let log = cluster.nodes[0].dir.join("node.log");
    cluster
        .wait_for("the writer to give up", Duration::from_secs(60), || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .is_ok_and(|t| t.contains("closing a connection whose peer read no reply"))
            }
        })
        .await;
    // ... and closes the connection: what was sent before ends, early.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection is still open after {received} bytes"),
        }
    }
    eprintln!("{received} bytes of replies before the close");
    let _ = sender.await;
    // The node still serves.
    assert!(cluster.status(0).await.is_some());
}

/// Sets the soft open-files limit of process `pid` (Linux `prlimit`).
#[cfg(target_os = "linux")]
fn set_soft_fd_limit(pid: u32, soft: Option<u64>) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the limits of `pid` into `old`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit read");
    let new = libc::rlimit {
        rlim_cur: soft.unwrap_or(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: sets the limits of `pid` from `new`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit write");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_survives_running_out_of_file_descriptors() {
    let cluster = TestCluster::start("conn-emfile", 1, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let pid = cluster.nodes[0].child.as_ref().expect("running").id();
    let addr = cluster.nodes[0].addr.clone();
    // No descriptor to spare: every accept fails (EMFILE).
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count() as u64;
    set_soft_fd_limit(pid, Some(open));
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut conn = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
        send(&mut conn, json!({"type": "status"}), 1).await;
        waiting.push(conn);
    }
    let log = cluster.nodes[0].dir.join("node.log");
    cluster
        .wait_for("accept to fail", Duration::from_secs(20), || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).is_ok_and(|t| t.contains("accept failed")) }
        })
        .await;
    // Descriptors again: the connections that waited in the backlog are served.
    set_soft_fd_limit(pid, None);
    for conn in &mut waiting {
        let b = next_body(conn, Duration::from_secs(20)).await;
        assert_eq!(b.expect("a reply")["type"], json!("status_ok"));
    }
    assert!(cluster.status(0).await.is_some(), "a new client is served");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("accept works again"), "no recovery logged");
}

#[test]
fn serve_refuses_budgets_that_do_not_fit_the_open_files_limit() {
    let dir = support_tcp::test_dir("conn-fd-budget");
    let port = support_tcp::free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args([
            "serve",
            "--id",
            "n1",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--peers", &format!("n1=127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&dir)
        .env(oncekv::tcp::CLIENT_CONNECTIONS_MAX_VAR, "1000000000000")
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started: {stderr}");
    assert!(
        stderr.contains("open-files limit") && stderr.contains("ONCEKV_CLIENT_CONNECTIONS_MAX"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_in_flight_are_bounded_on_the_whole_node() {
    let env = [
        ("ONCEKV_REQUESTS_IN_FLIGHT_MAX", "2"),
        // Writes without a quorum stay in flight for the whole test.
        ("ONCEKV_REQUEST_TIMEOUT_MS", "60000"),
    ];
    let mut cluster = TestCluster::start("conn-in-flight", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let addr = cluster.nodes[leader].addr.clone();
    // A committed write first: whatever a new leader appends on its own is in
    // the log before the count starts.
    let mut client = Client::new(options(&addr));
    client.open_session().await.expect("session");
    assert_eq!(
        client.write(json!("k"), json!(0)).await.expect("write"),
        Reply::WriteOk
    );
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.kill_together(&followers);
    let connect = || async { BufReader::new(TcpStream::connect(&addr).await.expect("connect")) };
    let mut watch = connect().await;
    let mut next_status = 100;
    let mut last_index = async |c: &mut BufReader<TcpStream>| {
        next_status += 1;
        send(c, json!({"type": "status"}), next_status).await;
        let b = next_body(c, Duration::from_secs(10)).await.expect("status");
        b["last_log_index"].as_u64().expect("an index")
    };
    let start = last_index(&mut watch).await;
    // Two writes, on two connections, take the node's two places.
    let mut a = Vec::new();
    for i in 0..2 {
        let mut conn = connect().await;
        send(
            &mut conn,
            json!({"type": "write", "key": "k", "value": i}),
            1,
        )
        .await;
        a.push(conn);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_index(&mut watch).await < start + 2 {
        assert!(
            Instant::now() < deadline,
            "the two writes were not proposed"
        );
    }
    // A third, on a third connection, waits for a place: not proposed, and the
    // status request behind it on the same connection not read.
    let mut b = connect().await;
    send(&mut b, json!({"type": "write", "key": "k", "value": 3}), 1).await;
    send(&mut b, json!({"type": "status"}), 2).await;
    let early = tokio::time::timeout(
        Duration::from_secs(1),
        next_body(&mut b, Duration::from_secs(30)),
    )
    .await;
    assert!(early.is_err(), "the third request was served: {early:?}");
    assert_eq!(
        last_index(&mut watch).await,
        start + 2,
        "the third write was proposed"
    );
    // Quorum back: the first two finish, and the third gets its place.
    for &i in &followers {
        cluster.restart(i);
    }
    for conn in &mut a {
        let r = next_body(conn, Duration::from_secs(60))
            .await
            .expect("an answer");
        assert_eq!(r["in_reply_to"], json!(1), "{r}");
    }
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let r = next_body(&mut b, Duration::from_secs(60))
            .await
            .expect("an answer");
        answered.push(r["in_reply_to"].clone());
    }
    answered.sort_by_key(|v| v.as_u64());
    assert_eq!(answered, vec![json!(1), json!(2)]);
}

/// Requests sent back to back on one connection (more than one batch of
/// proposals) are all answered, in the order sent, and a read among them sees
/// the write before it: the connection driver batches proposals on TCP as on
/// stdin without reordering anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_batched_and_answered_in_order() {
    let cluster = TestCluster::start("conn-pipelined", 1, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let mut conn = BufReader::new(
        TcpStream::connect(&cluster.nodes[leader].addr)
            .await
            .expect("connect"),
    );
    let requests = 600u64;
    let mut lines = String::new();
    for i in 1..=requests {
        let body = if i % 50 == 0 {
            json!({"type": "read", "key": (i - 1) % 5, "msg_id": i})
        } else {
            json!({"type": "write", "key": i % 5, "value": i, "msg_id": i})
        };
        lines += &json!({"src": "c9", "dest": "n1", "body": body}).to_string();
        lines.push('\n');
    }
    conn.get_mut()
        .write_all(lines.as_bytes())
        .await
        .expect("write");
    for i in 1..=requests {
        let b = next_body(&mut conn, Duration::from_secs(30))
            .await
            .expect("an answer");
        assert_eq!(b["in_reply_to"], json!(i), "in order: {b}");
        if i % 50 == 0 {
            assert_eq!(
                b["value"],
                json!(i - 1),
                "the read sees the write before it: {b}"
            );
        } else {
            assert_eq!(b["type"], "write_ok", "{b}");
        }
    }
}

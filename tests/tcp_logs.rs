//! Input from outside cannot fill the disk through the node's log: rejected input
//! is logged truncated and rate-limited, a connection gets one try at the key,
//! `node.log` has a size bound, and Maelstrom mode logs a huge junk line in a few
//! hundred bytes. And the log tells the story: who led in which term, the
//! election after a leader's death, the settings at start, snapshots, GC and
//! evictions with their numbers, without openraft's routine warnings.

mod support_tcp;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support_tcp::TestCluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Sends `junk` on a new connection to `addr`, then a `status` request, and waits
/// for its reply: the node has handled every junk line by then (one reader, in order).
async fn send_junk_then_status(addr: &str, junk: &[u8]) {
    let mut conn = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
    conn.get_mut().write_all(junk).await.expect("write junk");
    let status = json!({"src": "c1", "dest": "", "body": {"type": "status", "msg_id": 99}});
    let line = status.to_string() + "\n";
    conn.get_mut()
        .write_all(line.as_bytes())
        .await
        .expect("write status");
    loop {
        let mut reply = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), conn.read_line(&mut reply))
            .await
            .expect("the status reply in time")
            .expect("read");
        assert!(n > 0, "connection closed before the status reply");
        let v: Value = serde_json::from_str(&reply).expect("json");
        if v["body"]["in_reply_to"] == json!(99) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_garbage_lines_logs_far_less_than_a_megabyte() {
    let cluster = TestCluster::start("logs-garbage", 1, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let log = cluster.nodes[0].dir.join("node.log");
    let before = file_len(&log);
    let junk = b"x\n".repeat(500_000);
    send_junk_then_status(&cluster.nodes[0].addr, &junk).await;
    let grown = file_len(&log) - before;
    eprintln!(
        "{} bytes of junk lines: node.log grew {grown} bytes",
        junk.len()
    );
    assert!(
        grown < junk.len() as u64 / 10,
        "node.log grew {grown} bytes for {} bytes of junk",
        junk.len()
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("rejected-input messages were suppressed") || grown == 0,
        "no suppression count in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_guess_per_connection_and_bounded_logging_of_wrong_keys() {
    let key = "log-test-key-0123";
    let env = [
        (oncekv::tcp::CLUSTER_KEY_VAR, key),
        ("ONCEKV_REJECTED_LOG_PER_S", "1"),
        ("ONCEKV_REJECTED_LOG_BURST", "5"),
    ];
    let cluster = TestCluster::start("logs-wrong-key", 1, &env);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let addr = cluster.nodes[0].addr.clone();
    let hello = |i: u64| {
        let body = json!({"type": "peer_hello", "key": format!("guess-{i}"), "msg_id": i});
        json!({"src": "n9", "dest": "n1", "body": body}).to_string() + "\n"
    };
    // 1,000 guesses pipelined on one connection, the right key last: only the
    // first is checked, so the right key too is refused.
    let mut conn = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
    let right = {
        let body = json!({"type": "peer_hello", "key": key, "msg_id": 1_000});
        json!({"src": "n9", "dest": "n1", "body": body}).to_string() + "\n"
    };
    let guesses: String = (1..1_000).map(hello).collect::<String>() + &right;
    conn.get_mut()
        .write_all(guesses.as_bytes())
        .await
        .expect("write");
    for i in 1..=1_000 {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read_line(&mut line))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed after {i} answers");
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["body"]["type"], json!("error"), "guess {i}: {v}");
    }
    // Guessing on fresh connections: each costs a connection, and the log
    // records only a few of them.
    let guesses = 300;
    for i in 0..guesses {
        let mut conn = BufReader::new(TcpStream::connect(&addr).await.expect("connect"));
        conn.get_mut()
            .write_all(hello(i).as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        let _ = conn.read_line(&mut line).await;
    }
    let text = std::fs::read_to_string(cluster.nodes[0].dir.join("node.log")).expect("log");
    let logged = text.matches("wrong cluster key").count();
    eprintln!("{} wrong keys, {logged} logged", guesses + 1_000);
    assert!(logged < 100, "{logged} wrong-key lines logged");
    // Once the rate allows a message again, the count of the suppressed ones
    // is logged first.
    let log = cluster.nodes[0].dir.join("node.log");
    cluster
        .wait_for("the suppression count", Duration::from_secs(30), || {
            let (addr, log) = (addr.clone(), log.clone());
            async move {
                send_junk_then_status(&addr, b"junk\n").await;
                let text = std::fs::read_to_string(&log).expect("log");
                text.contains("rejected-input messages were suppressed")
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_log_never_exceeds_its_bound() {
    let bound = 64 * 1024;
    let bound_text = bound.to_string();
    let env = [
        (oncekv::tcp::NODE_LOG_BYTES_MAX_VAR, bound_text.as_str()),
        // Every rejected line logged: the size bound alone holds the file.
        ("ONCEKV_REJECTED_LOG_PER_S", "100000000"),
        ("ONCEKV_REJECTED_LOG_BURST", "100000000"),
    ];
    let cluster = TestCluster::start("logs-capped", 1, &env);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let junk = b"not json\n".repeat(20_000);
    send_junk_then_status(&cluster.nodes[0].addr, &junk).await;
    let dir = &cluster.nodes[0].dir;
    let (now, old) = (
        file_len(&dir.join("node.log")),
        file_len(&dir.join("node.log.1")),
    );
    eprintln!("node.log {now} bytes, node.log.1 {old} bytes");
    assert!(now <= bound, "node.log is {now} bytes, bound {bound}");
    assert!(old <= bound, "node.log.1 is {old} bytes, bound {bound}");
    assert!(old > bound / 2, "the log was never rotated: {old} bytes");
}

#[test]
fn maelstrom_mode_logs_a_ten_megabyte_junk_line_in_a_few_hundred_bytes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oncekv");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let mut junk = vec![b'j'; 10 << 20];
        junk.push(b'\n');
        let _ = stdin.write_all(&junk);
        // Dropping stdin closes it: the node exits.
    });
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut stderr)
        .expect("read stderr");
    let _ = writer.join();
    let status = child.wait().expect("wait");
    eprintln!(
        "exit {status}; stderr {} bytes: {}",
        stderr.len(),
        String::from_utf8_lossy(&stderr)
    );
    assert!(stderr.len() < 4_096, "{} bytes on stderr", stderr.len());
}

/// The lines of `name`'s node.log (the current file).
fn log_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("node.log"))
        .expect("node.log")
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_say_who_led_in_which_term_and_who_won_after_the_leader_died() {
    let mut cluster = TestCluster::start("logs-story", 3, &[]);
    let old = cluster.wait_leader(Duration::from_secs(20)).await;
    let old_name = cluster.nodes[old].name.clone();
    let old_term = cluster.status(old).await.expect("status").term;
    // A write, so the leader has replicated something before it dies.
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    client
        .write(json!("k"), json!(1))
        .await
        .expect("write before the kill");
    cluster.kill(old);
    let new = cluster.wait_leader(Duration::from_secs(30)).await;
    let new_name = cluster.nodes[new].name.clone();
    let new_term = cluster.status(new).await.expect("status").term;
    eprintln!("{old_name} led term {old_term}; after its kill {new_name} leads term {new_term}");
    assert_ne!(old, new);
    assert!(new_term > old_term);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let heard = |i: usize, what: String| {
        let dir = cluster.nodes[i].dir.clone();
        async move { log_lines(&dir).iter().any(|l| l.contains(&what)) }
    };
    // Each survivor's log names the old leader with its term, then the new
    // leader with its term; the winner's says it won.
    for &i in &survivors {
        let me = &cluster.nodes[i].name;
        let old_line = format!("{me}: leader is {old_name} (term {old_term})");
        let new_line = format!("{me}: leader is {new_name} (term {new_term})");
        cluster
            .wait_for(&new_line, Duration::from_secs(10), || {
                heard(i, new_line.clone())
            })
            .await;
        let lines = log_lines(&cluster.nodes[i].dir);
        let at = |what: &str| lines.iter().position(|l| l.contains(what));
        let (Some(a), Some(b)) = (at(&old_line), at(&new_line)) else {
            panic!(
                "{me}'s node.log lacks {old_line:?} or {new_line:?}:\n{}",
                lines.join("\n")
            );
        };
        assert!(a < b, "{me}: the old leader is logged after the new one");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("{me}: term {new_term} began"))),
            "{me}: no line for term {new_term}:\n{}",
            lines.join("\n")
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("starting {me} (id "))
                    && l.contains("election timeout")
                    && l.contains("data dir")),
            "{me}: no start-up line with the settings"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("{me}: membership: voters [n1, n2, n3]"))),
            "{me}: no membership line"
        );
        // openraft's routine warnings (RPCs to the dead leader, missed
        // heartbeats) are below the default level.
        let noise: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(" WARN openraft") || l.contains(" INFO openraft"))
            .collect();
        assert!(noise.is_empty(), "{me}: openraft noise: {noise:?}");
    }
    let won = format!("{new_name}: election won: leader of term {new_term}");
    let winner_log = log_lines(&cluster.nodes[new].dir);
    assert!(
        winner_log.iter().any(|l| l.contains(&won)),
        "{new_name}'s node.log lacks {won:?}"
    );
    let candidate = format!("{new_name}: election started: candidate in term {new_term}");
    assert!(
        winner_log.iter().any(|l| l.contains(&candidate)),
        "{new_name}'s node.log lacks {candidate:?}"
    );
}

/// Waits until node `i`'s log has a line containing every one of `parts`;
/// returns it.
async fn wait_log_line(
    cluster: &TestCluster,
    i: usize,
    parts: &[&str],
    within: Duration,
) -> String {
    let dir = cluster.nodes[i].dir.clone();
    let find = || {
        log_lines(&dir)
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
    };
    let what = format!("{}'s log to say {parts:?}", cluster.nodes[i].name);
    cluster
        .wait_for(&what, within, || {
            let found = find().is_some();
            async move { found }
        })
        .await;
    find().expect("found above")
}

/// The number just before `word` in `line` (`3 sessions expired` -> 3).
fn count_before(line: &str, word: &str) -> u64 {
    let head = &line[..line.find(word).expect("word")];
    head.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {word:?} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_gc_and_evictions_are_logged_with_their_numbers() {
    let env = [
        ("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "20"),
        ("ONCEKV_LOG_KEPT_BEHIND_SNAPSHOT", "0"),
        ("ONCEKV_SESSIONS_MAX", "4"),
        ("ONCEKV_SESSION_TIMEOUT_MS", "3000"),
        ("ONCEKV_GC_INTERVAL_MS", "100"),
    ];
    let mut cluster = TestCluster::start("logs-numbers", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    // Sessions into a table of four (once the leader's limits entry has
    // applied ONCEKV_SESSIONS_MAX): evictions, logged with a count.
    let mut clients = Vec::new();
    let evicting = |i: usize| {
        let dir = cluster.nodes[i].dir.clone();
        move || {
            log_lines(&dir)
                .iter()
                .any(|l| l.contains("sessions evicted"))
        }
    };
    let follower_evicts = evicting(follower);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !follower_evicts() {
        let mut c = cluster.client();
        c.open_session().await.expect("session");
        clients.push(c);
        assert!(
            std::time::Instant::now() < deadline,
            "no eviction logged after {} sessions (logs in {})",
            clients.len(),
            cluster.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("evictions logged after {} sessions", clients.len());
    let evicted = wait_log_line(
        &cluster,
        follower,
        &["sessions evicted", "sessions_max 4"],
        Duration::from_secs(10),
    )
    .await;
    eprintln!("{evicted}");
    assert!(count_before(&evicted, "sessions evicted") >= 1);
    // A follower killed, the leader snapshots and purges past it: back, it
    // installs the leader's snapshot.
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    client.write(json!("k"), json!(0)).await.expect("write");
    cluster.kill(follower);
    for i in 1..=45 {
        client.write(json!("k"), json!(i)).await.expect("write");
    }
    let taken = wait_log_line(
        &cluster,
        leader,
        &["snapshot taken up to log index", "bytes"],
        Duration::from_secs(10),
    )
    .await;
    eprintln!("{taken}");
    cluster
        .wait_for("the leader to purge", Duration::from_secs(20), || {
            let c = &cluster;
            async move {
                c.status(leader)
                    .await
                    .and_then(|s| s.purged_index)
                    .is_some_and(|p| p > 5)
            }
        })
        .await;
    cluster.restart(follower);
    let installed = wait_log_line(
        &cluster,
        follower,
        &["snapshot installed up to log index", "bytes"],
        Duration::from_secs(20),
    )
    .await;
    eprintln!("{installed}");
    // Restarted again, it loads the snapshot it holds.
    cluster.kill(follower);
    cluster.restart(follower);
    let loaded = wait_log_line(
        &cluster,
        follower,
        &["loaded the snapshot up to log index"],
        Duration::from_secs(20),
    )
    .await;
    eprintln!("{loaded}");
    // Every session idle past the timeout: a GC entry expires them, and every
    // replica says how many.
    drop(clients);
    let gc = wait_log_line(
        &cluster,
        leader,
        &["GC: ", "sessions expired", "entries at log index"],
        Duration::from_secs(30),
    )
    .await;
    eprintln!("{gc}");
    let expired = count_before(&gc, "sessions expired");
    assert!(expired >= 1, "{gc}");
}

//! Durability with real processes, sockets and disks (`--data-dir`: write-ahead log and snapshot files): what
//! `kill -9` cannot take away.
//!
//! - Every node killed at once and restarted from its data dir: every
//!   acknowledged add and write is still there, and so are the sessions (a retry
//!   of an executed seq gets its cached reply, the next seq executes).
//! - A follower down long enough that the leader purged the log it missed: it
//!   catches up by snapshot, and, as the new leader, answers a retry of a seq it
//!   never saw in its log from the snapshot's session table.
//! - A truncated or garbled log segment or snapshot file: `oncekv serve` exits
//!   non-zero with an error naming the file, instead of starting empty.
//! - The leader killed and restarted three times under load: counters equal the
//!   acknowledged adds, and the history is linearizable.
//!
//! The tests in this file take turns ([`SERIAL`]): each runs three node processes
//! with timing bounds, and the machine has two cores.

mod support_tcp;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oncekv::protocol::Reply;
use oncekv::tcp::{Client, ClientOptions};
use oncekv::tools::check::{CheckOptions, Validity, check_counters, check_linearizable};
use oncekv::tools::history::{HistoryOp, OpType};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support_tcp::{Recorder, TestCluster, seed, wait_caught_up, wait_status};

/// One test at a time in this file (tokio's mutex: held across awaits, not poisoned
/// by a failing test).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Workers of the load.
const WORKERS: u64 = 3;
/// Counter keys the workers add to (numbers `0..KEYS`); each worker also writes
/// its own key `"w{w}"`.
const KEYS: u64 = 3;
/// How long a worker's client retries one op (same seq) before giving up: longer
/// than a whole-cluster restart, so every op gets a definite answer.
const OP_DEADLINE: Duration = Duration::from_secs(30);

/// What a worker leaves when stopped.
struct WorkerEnd {
    /// Its index.
    w: u64,
    /// The value of its last acknowledged write to `"w{w}"`.
    last_write: Option<Value>,
}

/// Adds to shared counters and writes unique values to its own key, one op at a
/// time, each retried with the same seq until a definite answer.
async fn worker(
    w: u64,
    seed: u64,
    opts: ClientOptions,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> WorkerEnd {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w);
    let mut opts = opts;
    opts.deadline = OP_DEADLINE;
    let mut client = Client::new(opts);
    client.open_session().await.expect("open_session");
    let write_key = json!(format!("w{w}"));
    let mut process = w;
    let mut last_write = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (f, key, value) = if rng.gen_bool(0.25) {
            ("write", write_key.clone(), json!(w * 1_000_000 + n))
        } else {
            ("add", json!(rng.gen_range(0..KEYS)), json!(1))
        };
        rec.push(process, OpType::Invoke, f, &key, value.clone());
        let result = match f {
            "write" => client.write(key.clone(), value.clone()).await,
            _ => client.add(key.clone(), 1).await,
        };
        match result {
            Ok(Reply::AddOk { value }) => rec.push(process, OpType::Ok, f, &key, json!(value)),
            Ok(Reply::WriteOk) => {
                last_write = Some(value.clone());
                rec.push(process, OpType::Ok, f, &key, value);
            }
            Ok(Reply::Error { code, text }) if code.is_definite() => {
                let error = Some((code.code().into(), text));
                rec.push_error(process, OpType::Fail, f, &key, value, error);
            }
            other => {
                eprintln!("worker {w}: indefinite outcome {other:?}");
                let error = Some((0, format!("{other:?}")));
                rec.push_error(process, OpType::Info, f, &key, value, error);
                process += WORKERS; // Jepsen's rule: a fresh process after info
            }
        }
    }
    WorkerEnd { w, last_write }
}

/// [`WORKERS`] workers running against a cluster.
struct Load {
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<WorkerEnd>>,
}

impl Load {
    fn start(cluster: &TestCluster, seed: u64) -> Load {
        let rec = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|w| {
                let (opts, rec, stop) = (cluster.client_options(), rec.clone(), stop.clone());
                tokio::spawn(worker(w, seed, opts, rec, stop))
            })
            .collect();
        Load { rec, stop, workers }
    }

    /// Waits until `n` ops were acknowledged after `since`, or panics naming `what`.
    async fn wait_acked(&self, since: u64, n: usize, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.rec.acked_since(since) < n {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the workers (each finishes its op in progress).
    async fn stop(self) -> (Vec<HistoryOp>, Vec<WorkerEnd>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut ends = Vec::new();
        for w in self.workers {
            ends.push(w.await.expect("worker"));
        }
        let ops = self.rec.ops.lock().unwrap().clone();
        (ops, ends)
    }
}

/// After the load: writes `history.jsonl`, reads every key, and checks that no op
/// was left without a definite answer, every counter equals its acknowledged adds,
/// every write key holds its worker's last acknowledged write, and the history is
/// linearizable.
async fn check_after_load(cluster: &TestCluster, ops: &[HistoryOp], ends: &[WorkerEnd]) {
    let path = cluster.dir.join("history.jsonl");
    let text: String = ops
        .iter()
        .map(|o| serde_json::to_string(o).unwrap() + "\n")
        .collect();
    fs::write(&path, text).expect("write history");
    let count = |kind: OpType| ops.iter().filter(|o| o.kind == kind).count();
    eprintln!(
        "history: {} ok, {} fail, {} info in {}",
        count(OpType::Ok),
        count(OpType::Fail),
        count(OpType::Info),
        path.display()
    );
    // The clients retry for 30 s with the same seq: every op must end definite and ok.
    assert_eq!(count(OpType::Info), 0, "ops without a definite answer");
    assert_eq!(count(OpType::Fail), 0, "ops that failed");

    let mut reader = cluster.client();
    let mut final_reads = BTreeMap::new();
    for key in 0..KEYS {
        let acked = ops
            .iter()
            .filter(|o| o.kind == OpType::Ok && o.f == "add" && o.key == Some(json!(key)))
            .count() as i64;
        let value = match reader.read(json!(key)).await {
            Ok(Reply::ReadOk { value }) => Value::clone(&value),
            Ok(Reply::Error { code, .. }) if code.code() == 20 => json!(0),
            other => panic!("final read of {key}: {other:?}"),
        };
        eprintln!("counter {key}: {value}, acknowledged adds {acked}");
        assert_eq!(
            value,
            json!(acked),
            "counter {key}: an add lost or duplicated"
        );
        final_reads.insert(key.to_string(), value);
    }
    for end in ends {
        let key = json!(format!("w{}", end.w));
        let Some(expected) = &end.last_write else {
            continue;
        };
        let read = reader.read(key.clone()).await.expect("read");
        assert_eq!(
            read,
            Reply::ReadOk {
                value: expected.clone().into()
            },
            "{key}: the last acknowledged write"
        );
    }
    let counters = check_counters(ops, &final_reads);
    assert_eq!(counters.valid, Validity::Valid, "{}", counters.render());
    let lin = check_linearizable(ops, &CheckOptions::default());
    assert_eq!(lin.valid, Validity::Valid, "{}", lin.render());
}

/// 1. `kill -9` every node at once under load, restart all three from their data
///    dirs: nothing acknowledged is lost, nothing retried runs twice, and the
///    sessions are intact (the workers' in-flight ops retry across the outage with
///    the same seqs; a probe session's old seq gets its cached reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_at_once_keeps_writes_and_sessions() {
    let _serial = SERIAL.lock().await;
    let seed = seed();
    // Snapshots every 100 entries: a restart then loads a snapshot and replays the
    // log after it, both paths.
    let env = [("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "100")];
    let mut cluster = TestCluster::start("restart-all", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;

    // A probe session with a known history: seqs 1..=5 each add 1 to "probe".
    let mut probe = cluster.client();
    let probe_id = probe.open_session().await.expect("session");
    for i in 1..=5 {
        let r = probe.add(json!("probe"), 1).await.expect("add");
        assert_eq!(r, Reply::AddOk { value: i });
    }

    let load = Load::start(&cluster, seed);
    load.wait_acked(0, 30, Duration::from_secs(10), "acks before the kill")
        .await;
    wait_status(
        &cluster,
        leader,
        "a snapshot on the leader",
        Duration::from_secs(15),
        |s| s.snapshot_index.is_some(),
    )
    .await;
    let applied_before: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(cluster.status(i).await.and_then(|s| s.applied_index));
        }
        v
    };

    let killed_at = load.rec.now();
    let acked_before = load.rec.acked_since(0);
    cluster.kill_together(&[0, 1, 2]);
    let down = Instant::now();
    eprintln!(
        "killed all three nodes; {acked_before} ops acknowledged; applied {applied_before:?}"
    );
    // Node 1 comes back writing its log buffered (pwrite + fdatasync) where it
    // wrote direct blocks before the kill: the two modes share one format.
    cluster.restart(0);
    cluster.restart_with_args(1, &["--wal-io", "buffered"]);
    cluster.restart(2);
    // Nothing can be acknowledged between the kill and here: no node runs.
    let spawned_at = load.rec.now();
    let up = Instant::now();
    let new = cluster.wait_leader(Duration::from_secs(15)).await;
    let elected = up.elapsed();
    load.wait_acked(
        spawned_at,
        1,
        Duration::from_secs(20),
        "an ack after the restart",
    )
    .await;
    let serving = up.elapsed();
    eprintln!(
        "restart (down {} ms): leader {} agreed {} ms after the spawn, first ack {} ms after it",
        (up - down).as_millis(),
        cluster.nodes[new].name,
        elected.as_millis(),
        serving.as_millis()
    );
    load.wait_acked(
        killed_at,
        50,
        Duration::from_secs(15),
        "load after the restart",
    )
    .await;
    let (ops, ends) = load.stop().await;
    check_after_load(&cluster, &ops, &ends).await;

    // Every node restored every session from its own disk (workers + probe), and
    // applies at least what it had applied before the kill. Not at once: a node
    // replays its log only up to its last saved commit pointer (written lazily,
    // storage.md) and applies the rest once the new leader's commit index reaches
    // it, which a follower learns with the next entries or a commit update.
    for (i, before) in applied_before.iter().enumerate() {
        wait_status(
            &cluster,
            i,
            "the sessions on every node, and at least its applied index before the kill",
            Duration::from_secs(10),
            |s| s.sessions == WORKERS as usize + 1 && s.applied_index >= *before,
        )
        .await;
    }

    // The probe's seq 5 ran before the kill: its retry is answered from the
    // restored session table and does not run again; seq 6 runs.
    probe.set_session(probe_id, 5);
    let retried = probe.add(json!("probe"), 1).await.expect("retry");
    assert_eq!(
        retried,
        Reply::AddOk { value: 5 },
        "the cached reply of seq 5"
    );
    let read = probe.read(json!("probe")).await.expect("read");
    assert_eq!(
        read,
        Reply::ReadOk {
            value: json!(5).into()
        },
        "seq 5 ran once"
    );
    let next = probe.add(json!("probe"), 1).await.expect("seq 6");
    assert_eq!(next, Reply::AddOk { value: 6 }, "seq 6 executes");
}

/// 2. A follower down while the leader snapshots and purges the log it missed
///    catches up by snapshot; then made the only candidate for leader, it answers
///    a retry of a seq that ran while it was down from the snapshot's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_purged_log_catches_up_by_snapshot_with_sessions() {
    let _serial = SERIAL.lock().await;
    let env = [
        ("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "20"),
        ("ONCEKV_LOG_KEPT_BEHIND_SNAPSHOT", "0"),
        // No background GC entries: the logs stay still when the test wants them to.
        ("ONCEKV_GC_INTERVAL_MS", "600000"),
    ];
    let mut cluster = TestCluster::start("snap-catchup", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut client = cluster.client();
    let client_id = client.open_session().await.expect("session");
    for i in 1..=10 {
        assert_eq!(
            client.add(json!("k"), 1).await.expect("add"),
            Reply::AddOk { value: i }
        );
    }
    let last = cluster.status(leader).await.and_then(|s| s.last_log_index);
    let f = wait_status(
        &cluster,
        follower,
        "the follower to apply the first adds",
        Duration::from_secs(5),
        |s| s.applied_index >= last,
    )
    .await;
    cluster.kill(follower);
    let missed_from = f.last_log_index.expect("follower log") + 1;
    eprintln!(
        "killed follower {} at log index {}",
        cluster.nodes[follower].name,
        missed_from - 1
    );

    // Seqs 11..=110 run while it is down; remember where seq 60 is in the log.
    let mut seq60_index = None;
    for i in 11..=110 {
        let r = client.add(json!("k"), 1).await.expect("add");
        assert_eq!(r, Reply::AddOk { value: i });
        if i == 60 {
            // Acknowledged means committed, so it sits at or below the last index.
            seq60_index = cluster.status(leader).await.and_then(|s| s.last_log_index);
        }
    }
    let seq60_index = seq60_index.expect("leader status");
    let l = wait_status(
        &cluster,
        leader,
        "the leader to snapshot past seq 60",
        Duration::from_secs(10),
        |s| s.snapshot_index >= Some(seq60_index),
    )
    .await;
    eprintln!("seq 60 at or below index {seq60_index}; leader {l:?}");
    // A snapshot alone does not remove the entries the follower lacks: the leader
    // purges behind it only when no replication stream is using them (the dead
    // follower's retries can hold them for a moment). Wait for the purge.
    let l = wait_status(
        &cluster,
        leader,
        "the leader to purge its log past the follower's last entry",
        Duration::from_secs(10),
        |s| s.purged_index >= Some(missed_from),
    )
    .await;
    eprintln!("leader purged to {:?}", l.purged_index);

    // Restarted with a snapshot threshold it never reaches: any snapshot it holds
    // afterwards was installed by the leader, not built from entries it received.
    let restarted = Instant::now();
    cluster.restart_with(follower, &[("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "1000000")]);
    let leader_last = l.last_log_index;
    let f = wait_caught_up(
        &cluster,
        follower,
        leader_last,
        Duration::from_secs(15),
        restarted,
    )
    .await;
    assert!(
        f.snapshot_index >= Some(seq60_index) && f.snapshot_index > Some(missed_from),
        "the follower installed a snapshot covering seq 60: {f:?}"
    );
    assert_eq!(f.sessions, 1, "the session came with the snapshot: {f:?}");

    // Make the caught-up node the leader: kill the old leader and the other
    // follower together, restart the other with an election timeout far above
    // the caught-up node's, so it votes but does not campaign.
    cluster.kill_together(&[leader, other]);
    cluster.restart_with(
        other,
        &[
            ("ONCEKV_ELECTION_TIMEOUT_MIN_MS", "10000"),
            ("ONCEKV_ELECTION_TIMEOUT_MAX_MS", "11000"),
        ],
    );
    let new = cluster.wait_leader(Duration::from_secs(8)).await;
    assert_eq!(new, follower, "the caught-up node leads");

    // seq 60 never reached its log: the cached reply comes from the snapshot.
    let mut only_follower = Client::new(ClientOptions::new(vec![
        cluster.nodes[follower].addr.clone(),
    ]));
    only_follower.set_session(client_id.clone(), 60);
    let r = only_follower.add(json!("k"), 1).await.expect("retry");
    assert_eq!(r, Reply::AddOk { value: 60 }, "the cached reply of seq 60");
    let r = only_follower.read(json!("k")).await.expect("read");
    assert_eq!(
        r,
        Reply::ReadOk {
            value: json!(110).into()
        },
        "seq 60 ran once"
    );
    only_follower.set_session(client_id, 111);
    let r = only_follower.add(json!("k"), 1).await.expect("seq 111");
    assert_eq!(r, Reply::AddOk { value: 111 }, "seq 111 executes");
}

/// Bytes of `file` replaced by a 0xA5 pattern at `at`.
fn garble_at(file: &Path, at: u64, len: usize) {
    let mut f = OpenOptions::new().write(true).open(file).expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&vec![0xA5; len]).expect("write");
}

/// `len` bytes of `file` at `at` set to zero.
fn zero_at(file: &Path, at: u64, len: u64) {
    let mut f = OpenOptions::new().write(true).open(file).expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&vec![0; len as usize]).expect("write");
}

/// The offset of the last nonzero byte of `file`.
fn last_nonzero(file: &Path) -> u64 {
    let bytes = fs::read(file).expect("read");
    bytes.iter().rposition(|&b| b != 0).expect("not all zero") as u64
}

/// `file` cut to `keep` of its length.
fn truncate(file: &Path, keep: f64) {
    let len = fs::metadata(file).expect("metadata").len();
    let f = OpenOptions::new().write(true).open(file).expect("open");
    f.set_len((len as f64 * keep) as u64).expect("truncate");
}

/// A copy of data dir `from` at `to` (files and `snapshots/`).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for item in fs::read_dir(from).expect("read_dir") {
        let item = item.expect("entry");
        let target = to.join(item.file_name());
        if item.file_type().expect("type").is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            fs::copy(item.path(), &target).expect("copy");
        }
    }
}

/// Node `name`'s address in `peers` (`n1=127.0.0.1:7001,...`).
fn own_addr<'a>(name: &str, peers: &'a str) -> &'a str {
    peers
        .split(',')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .expect("the node is in peers")
}

/// Runs `oncekv serve` as node `name` on `dir`; expects it to exit non-zero within
/// `timeout`; returns its stderr and how long it ran.
fn serve_must_fail(name: &str, peers: &str, dir: &Path, timeout: Duration) -> (String, Duration) {
    let stderr_path = dir.with_extension("stderr");
    let stderr = fs::File::create(&stderr_path).expect("stderr file");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["serve", "--id", name])
        // Its own address in `peers` (any other is refused before the dir is read).
        .args(["--listen", own_addr(name, peers)])
        .args(["--peers", peers])
        .arg("--data-dir")
        .arg(dir)
        // What an operator sees by default: the error, no backtrace.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn oncekv serve");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "oncekv serve on damaged {} still running after {timeout:?}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = started.elapsed();
    let text = fs::read_to_string(&stderr_path).expect("read stderr");
    assert!(
        !status.success(),
        "oncekv serve on damaged {} exited with {status}; stderr:\n{text}",
        dir.display()
    );
    (text, ran)
}

/// The newest segment file of a log directory.
fn newest_segment(log_dir: &Path) -> PathBuf {
    let segs = oncekv::storage::wal::segment_files(log_dir).expect("log dir");
    segs.last().cloned().expect("a segment")
}

/// 3. A node's log segment or snapshot file truncated, garbled or zeroed while it is down:
///    `oncekv serve` exits non-zero promptly, its stderr naming the damaged file,
///    and does not start empty. The same dir undamaged starts fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_or_snapshot_stops_serve_with_an_error_naming_the_file() {
    let _serial = SERIAL.lock().await;
    let env = [
        ("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "20"),
        ("ONCEKV_LOG_KEPT_BEHIND_SNAPSHOT", "1000"),
    ];
    let mut cluster = TestCluster::start("damaged", 3, &env);
    cluster.wait_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    for i in 1..=40 {
        let r = client.add(json!("k"), 1).await.expect("add");
        assert_eq!(r, Reply::AddOk { value: i });
    }
    // A recognizable value in the live log (kept behind the snapshot).
    let marker = "damage-marker-7f3a";
    let r = client
        .write(json!("m"), json!(marker))
        .await
        .expect("write");
    assert_eq!(r, Reply::WriteOk);
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let last = cluster.status(leader).await.and_then(|s| s.last_log_index);
    let s = wait_status(
        &cluster,
        0,
        "n1 to apply the marker and hold a snapshot",
        Duration::from_secs(10),
        |s| s.snapshot_index.is_some() && s.applied_index >= last,
    )
    .await;
    // The checkpoint records the synced end of the log within a moment (records
    // zeroed before it are refused; in the moment after, they would read as a
    // torn write).
    let n1_wal = cluster.nodes[0].dir.join(oncekv::storage::LOG_DIR);
    cluster
        .wait_for(
            "n1's checkpoint to cover its log",
            Duration::from_secs(10),
            || {
                let wal = n1_wal.clone();
                async move {
                    let synced = oncekv::storage::wal::checkpoint::Checkpoint::read(&wal)
                        .ok()
                        .flatten()
                        .map_or(0, |c| c.point.offset);
                    synced > last_nonzero(&newest_segment(&wal))
                }
            },
        )
        .await;
    cluster.kill_together(&[0, 1, 2]);
    let n1 = cluster.nodes[0].dir.clone();
    let snapshot = single_snapshot(&n1);
    eprintln!("n1 {s:?}, snapshot {}", snapshot.display());

    type Damage = fn(&Path);
    let cases: [(&str, &str, Damage); 7] = [
        ("log-truncated", "log", |f| truncate(f, 0.5)),
        // Every record zeroed, vote included: it reads like a log never written,
        // but the checkpoint knows how far it was synced.
        ("log-records-zeroed", "log", |f| {
            let end = last_nonzero(f) + 1;
            zero_at(f, 32, end - 32);
        }),
        // Two sectors in the middle, valid records after them.
        ("log-middle-zeroed", "log", |f| {
            let at = last_nonzero(f) / 2 / 512 * 512;
            zero_at(f, at, 1024);
        }),
        ("log-header-garbled", "log", |f| garble_at(f, 0, 16)),
        ("log-entry-garbled", "log", |f| {
            // Every copy of the marker's bytes, so the live page is hit too.
            let bytes = fs::read(f).expect("read");
            let needle = b"damage-marker-7f3a"; // the marker below
            let hits: Vec<usize> = (0..bytes.len().saturating_sub(needle.len()))
                .filter(|&i| &bytes[i..i + needle.len()] == needle)
                .collect();
            assert!(!hits.is_empty(), "marker not found in {}", f.display());
            for at in hits {
                garble_at(f, at as u64, needle.len());
            }
        }),
        ("snapshot-truncated", "snapshot", |f| truncate(f, 0.9)),
        ("snapshot-garbled", "snapshot", |f| {
            let len = fs::metadata(f).expect("metadata").len();
            garble_at(f, len * 3 / 4, 8);
        }),
    ];
    for (case, which, damage) in cases {
        let dir = cluster.dir.join(case);
        copy_dir(&n1, &dir);
        let file = match which {
            "log" => newest_segment(&dir.join(oncekv::storage::LOG_DIR)),
            _ => dir
                .join("snapshots")
                .join(snapshot.file_name().expect("name")),
        };
        damage(&file);
        let (stderr, ran) = serve_must_fail("n1", &cluster.peers, &dir, Duration::from_secs(10));
        let error = stderr
            .lines()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or_else(|| panic!("{case}: no error line in stderr:\n{stderr}"));
        eprintln!("{case}: exited after {} ms: {error}", ran.as_millis());
        assert!(
            error.contains(&file.display().to_string()),
            "{case}: the error should name {}: {error}",
            file.display()
        );
        assert!(
            error.contains("corrupt"),
            "{case}: the error should say the file is corrupt: {error}"
        );
    }

    // The undamaged original starts, with its snapshot and session.
    cluster.restart(0);
    let restored = wait_status(
        &cluster,
        0,
        "the undamaged n1 to start",
        Duration::from_secs(10),
        // n1 may have taken a newer snapshot after `s` was read.
        |r| r.snapshot_index >= s.snapshot_index && r.sessions == 1,
    )
    .await;
    eprintln!("undamaged n1 restarted: {restored:?}");
}

/// The one snapshot file in `dir/snapshots`.
fn single_snapshot(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir.join("snapshots"))
        .expect("snapshots dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert_eq!(files.len(), 1, "one snapshot file: {files:?}");
    files[0].clone()
}

/// 4. The leader `kill -9`ed three times under load, each time restarted from its
///    data dir once a new leader serves: every counter equals its acknowledged
///    adds, every op got a definite answer, and the history is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_three_times_under_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let seed = seed();
    let mut cluster = TestCluster::start("leader-kills", 3, &[]);
    cluster.wait_leader(Duration::from_secs(10)).await;
    let load = Load::start(&cluster, seed);
    load.wait_acked(0, 20, Duration::from_secs(10), "acks before the first kill")
        .await;
    for round in 1..=3 {
        let old = cluster.wait_leader(Duration::from_secs(10)).await;
        let killed_at = load.rec.now();
        cluster.kill(old);
        let new = cluster.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(new, old);
        let what = format!("acks after kill {round}");
        load.wait_acked(killed_at, 20, Duration::from_secs(15), &what)
            .await;
        let failover = load.rec.first_ack_invoked_after(killed_at).expect("ack") - killed_at;
        // Back from its data dir: it must catch up with what the new leader applied.
        let restarted = Instant::now();
        cluster.restart(old);
        let target = cluster.status(new).await.and_then(|s| s.applied_index);
        wait_status(
            &cluster,
            old,
            "the restarted node to catch up",
            Duration::from_secs(10),
            |s| s.applied_index >= target,
        )
        .await;
        eprintln!(
            "kill {round}: {} killed, {} leads, first op invoked after the kill acked {} ms \
             after it; \
             restarted node caught up in {} ms",
            cluster.nodes[old].name,
            cluster.nodes[new].name,
            failover / 1_000_000,
            restarted.elapsed().as_millis()
        );
    }
    let since = load.rec.now();
    load.wait_acked(
        since,
        30,
        Duration::from_secs(10),
        "load after the last restart",
    )
    .await;
    let (ops, ends) = load.stop().await;
    check_after_load(&cluster, &ops, &ends).await;
}

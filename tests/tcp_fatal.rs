//! A node whose Raft stops on a storage error ends its process, loudly and
//! non-zero, instead of lingering: such a node answers `status` but can never vote,
//! append or apply again, and a supervisor only restarts a process that exited.

mod support_tcp;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oncekv::protocol::Reply;
use oncekv::tcp::{Client, ClientOptions};
use serde_json::json;
use support_tcp::{free_port, test_dir};

/// A one-node cluster whose data dir is a 6 MiB tmpfs (in a private mount
/// namespace, so nothing outlives the test) is written until the disk is full:
/// every write is either acknowledged or answered with an error, and once the log
/// cannot be written the process exits non-zero naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_ends_the_process_non_zero() {
    let dir = test_dir("fatal-full-disk");
    let addr = format!("127.0.0.1:{}", free_port());
    let script = r#"mount -t tmpfs -o size=6m oncekv-test "$1" || exit 97
"$2" serve --id n1 --listen "$3" --peers "n1=$3" --data-dir "$1/data"
status=$?
umount "$1"
exit $status"#;
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&dir)
        .arg(env!("CARGO_BIN_EXE_oncekv"))
        .arg(&addr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: `unshare` is not available to mount a small tmpfs");
        return;
    };
    let mut opts = ClientOptions::new(vec![addr.clone()]);
    opts.deadline = Duration::from_secs(5);
    let mut client = Client::new(opts);
    let value = "v".repeat(200 << 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = 0;
    let mut session = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not exit within 60 s of a full disk ({acked} writes acknowledged)"
        );
        if !session {
            session = client.open_session().await.is_ok();
            continue;
        }
        // Until the disk fills each write is acknowledged; after, errors (never a
        // success for a write that is not on disk), until the process is gone.
        if let Ok(Reply::WriteOk) = client.write(json!(acked), json!(value)).await {
            acked += 1;
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    if status.code() == Some(97) {
        eprintln!("SKIPPED: cannot mount a tmpfs here: {stderr}");
        return;
    }
    eprintln!("{acked} writes acknowledged; the node exited with {status}: {stderr}");
    assert!(
        acked > 0,
        "no write was acknowledged before the disk filled"
    );
    assert!(!status.success(), "exited with {status}: {stderr}");
    assert!(
        stderr.contains("raft stopped") || stderr.contains("fatal"),
        "the cause is on stderr: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "the device's own error is named: {stderr}"
    );
}

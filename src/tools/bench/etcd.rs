//! The etcd side of `bench-cluster`: [`EtcdCluster`], etcd member processes on
//! loopback with their data in temporary directories, and [`EtcdClient`], a minimal
//! HTTP/1.1 keep-alive client for etcd 3.4's JSON gateway (`POST /v3/kv/put`,
//! `POST /v3/maintenance/status`). Install etcd with `apt-get install -y etcd-server`.
//!
//! It may not touch oncekv's side of the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Longest response header or body accepted, in bytes.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// One etcd member.
struct Member {
    /// `e1`, `e2`, ...
    name: String,
    /// Port of its client URL (the JSON gateway).
    client_port: u16,
    /// Its data directory (WAL and bolt db), kept across restarts.
    dir: PathBuf,
    /// Where its stderr goes.
    log: PathBuf,
    /// The process while it runs.
    child: Option<Child>,
}

/// A 3.4 etcd cluster of N members on loopback.
pub struct EtcdCluster {
    /// The etcd binary.
    bin: PathBuf,
    /// `members[i]` is `e{i+1}`.
    members: Vec<Member>,
    /// The `--initial-cluster` value (ignored by etcd once a data dir exists).
    initial_cluster: String,
    /// Further flags for every member (timing overrides).
    extra_args: Vec<String>,
}

/// The etcd binary's `--version` first line, or a message saying how to install it.
pub fn check_binary(bin: &Path) -> anyhow::Result<String> {
    let hint = "install it with `apt-get install -y etcd-server` (Debian's etcd 3.4, \
                binary /usr/bin/etcd) or pass --etcd PATH";
    if !bin.is_file() {
        anyhow::bail!("etcd not found at {}: {hint}", bin.display());
    }
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}; {hint}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(
        first.contains("etcd Version: 3."),
        "{} --version says {first:?}, expected etcd 3.x; {hint}",
        bin.display()
    );
    Ok(first)
}

impl EtcdCluster {
    /// Starts one member per `(client_port, peer_port)` under `root`, each with
    /// `extra_args` appended.
    pub fn start(
        bin: &Path,
        root: &Path,
        ports: &[(u16, u16)],
        extra_args: &[String],
    ) -> std::io::Result<EtcdCluster> {
        std::fs::create_dir_all(root)?;
        let members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (client_port, _))| Member {
                name: format!("e{}", i + 1),
                client_port: *client_port,
                dir: root.join(format!("e{}", i + 1)),
                log: root.join(format!("e{}.log", i + 1)),
                child: None,
            })
            .collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            bin: bin.to_path_buf(),
            members,
            initial_cluster,
            extra_args: extra_args.to_vec(),
        };
        for (i, (_, peer)) in ports.iter().enumerate() {
            cluster.spawn(i, *peer)?;
        }
        Ok(cluster)
    }

    /// The peer port of member `i`, from the initial cluster string.
    fn peer_port(&self, i: usize) -> u16 {
        self.initial_cluster
            .split(',')
            .nth(i)
            .and_then(|m| m.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Starts member `i` with its listen addresses and data directory (defaults
    /// otherwise: fsync on, heartbeat 100 ms, election timeout 1000 ms).
    fn spawn(&mut self, i: usize, peer_port: u16) -> std::io::Result<()> {
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = Command::new(&self.bin)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "oncekv-bench"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        m.child = Some(child);
        Ok(())
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        let peer = self.peer_port(i);
        self.spawn(i, peer)
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Member `i`'s data directory.
    pub fn dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }

    /// The pids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// The members' gateway addresses (`127.0.0.1:PORT`), in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Fails with the end of its log if a started member has exited (an unreaped
    /// child shows as a zombie, state `Z`, in `/proc/PID/stat`), e.g. because
    /// etcd refused its flags.
    fn check_alive(&self) -> anyhow::Result<()> {
        for m in &self.members {
            let Some(child) = &m.child else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
            let exited = stat.map_or(true, |s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next())
                    .is_some_and(|state| state == "Z" || state == "X")
            });
            if exited {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                anyhow::bail!(
                    "etcd member {} exited at start; the end of {}:\n{}",
                    m.name,
                    m.log.display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// Waits until every member reports the same leader, term and applied index,
    /// then returns the leader's index.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut probe = EtcdClient::new(self.endpoints());
        let mut last = String::from("no status yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            let mut views = Vec::new();
            for i in 0..self.members.len() {
                match probe.status(i).await {
                    Ok(s) => views.push(s),
                    Err(e) => last = e,
                }
            }
            if views.len() == self.members.len() {
                let first = &views[0];
                let agree = views.iter().all(|s| {
                    s.leader != 0
                        && s.leader == first.leader
                        && s.term == first.term
                        && s.applied == first.applied
                });
                if let (true, Some(i)) = (agree, views.iter().position(|s| s.is_leader())) {
                    return Ok(i);
                }
                last = format!("views differ: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("etcd cluster did not settle within {timeout:?}: {last}")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// What `/v3/maintenance/status` says about one member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// This member's id.
    pub member_id: u64,
    /// The leader's member id (0: none known).
    pub leader: u64,
    /// Raft term.
    pub term: u64,
    /// Raft applied index.
    pub applied: u64,
}

impl MemberStatus {
    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }

    /// Parses the gateway's JSON (64-bit numbers arrive as strings).
    fn parse(body: &str) -> Result<MemberStatus, String> {
        let v: Value = serde_json::from_str(body).map_err(|e| format!("status: {e}: {body}"))?;
        let num = |v: &Value| -> u64 {
            match v {
                Value::String(s) => s.parse().unwrap_or(0),
                Value::Number(n) => n.as_u64().unwrap_or(0),
                _ => 0,
            }
        };
        Ok(MemberStatus {
            member_id: num(&v["header"]["member_id"]),
            leader: num(&v["leader"]),
            term: num(&v["raftTerm"]),
            applied: num(&v["raftAppliedIndex"]),
        })
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    /// Buffered response side.
    r: BufReader<OwnedReadHalf>,
    /// Request side.
    w: OwnedWriteHalf,
}

/// A client of etcd's JSON gateway that retries a put across members, with the same
/// per-attempt timeout and back-off schedule as [`crate::tcp::Client`].
pub struct EtcdClient {
    /// Gateway addresses, `127.0.0.1:PORT`.
    endpoints: Vec<String>,
    /// One lazily opened connection per endpoint.
    conns: Vec<Option<Conn>>,
    /// Endpoint to try first (the last that answered).
    target: usize,
    /// Total time one put may take, retries included.
    pub deadline: Duration,
    /// Wait for one response before trying another member.
    pub attempt_timeout: Duration,
    /// Pause between attempts (doubles per failed attempt, up to 8x).
    pub retry_backoff: Duration,
}

impl EtcdClient {
    /// A client of `endpoints` with [`crate::tcp::ClientOptions::new`]'s timings.
    pub fn new(endpoints: Vec<String>) -> EtcdClient {
        let defaults = crate::tcp::ClientOptions::new(Vec::new());
        EtcdClient {
            conns: endpoints.iter().map(|_| None).collect(),
            endpoints,
            target: 0,
            deadline: defaults.deadline,
            attempt_timeout: defaults.attempt_timeout,
            retry_backoff: defaults.retry_backoff,
        }
    }

    /// Sends the next requests to endpoint `i` first.
    pub fn set_target(&mut self, i: usize) {
        self.target = i % self.endpoints.len();
    }

    /// Puts `value` at `key`, retrying on any failure across members until the
    /// deadline. A put of a fixed value is idempotent, so retrying needs no session.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key),
            base64(value)
        );
        let deadline = Instant::now() + self.deadline;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let i = self.target;
            let last = match self.post(i, "/v3/kv/put", &body).await {
                Ok((200, _)) => return Ok(()),
                Ok((code, text)) => format!("HTTP {code}: {text}"),
                Err(e) => e,
            };
            let pause = self.retry_backoff * 2u32.pow(attempts.min(4) - 1);
            if Instant::now() + pause >= deadline {
                return Err(format!("put: {attempts} attempts, last: {last}"));
            }
            tokio::time::sleep(pause).await;
            self.target = (i + 1) % self.endpoints.len();
        }
    }

    /// Member `i`'s `/v3/maintenance/status`.
    pub async fn status(&mut self, i: usize) -> Result<MemberStatus, String> {
        match self.post(i, "/v3/maintenance/status", "{}").await? {
            (200, body) => MemberStatus::parse(&body),
            (code, body) => Err(format!("status: HTTP {code}: {body}")),
        }
    }

    /// One POST to endpoint `i` (no retry): status code and body.
    pub async fn post(
        &mut self,
        i: usize,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let addr = self.endpoints[i].clone();
        let conn = match self.conns[i].take() {
            Some(c) => c,
            None => {
                let connect = TcpStream::connect(&addr);
                let stream = tokio::time::timeout(self.attempt_timeout, connect)
                    .await
                    .map_err(|_| format!("connect {addr}: timed out"))?
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                Conn {
                    r: BufReader::new(r),
                    w,
                }
            }
        };
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let exchange = exchange(conn, request);
        match tokio::time::timeout(self.attempt_timeout, exchange).await {
            Ok(Ok((conn, code, body, keep))) => {
                if keep {
                    self.conns[i] = Some(conn);
                }
                Ok((code, body))
            }
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!("{addr}: no response in {:?}", self.attempt_timeout)),
        }
    }
}

/// Writes `request` and reads one response: the connection, status code, body,
/// and whether the connection may be reused.
async fn exchange(mut conn: Conn, request: String) -> Result<(Conn, u16, String, bool), String> {
    conn.w
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    read_line(&mut conn.r, &mut line).await?;
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    loop {
        read_line(&mut conn.r, &mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            read_line(&mut conn.r, &mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            if body.len() + size > RESPONSE_BYTES_MAX {
                return Err("response too long".into());
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.r
                .read_exact(&mut body[start..])
                .await
                .map_err(|e| e.to_string())?;
            read_line(&mut conn.r, &mut line).await?; // the chunk's CRLF
            if size == 0 {
                break;
            }
        }
        body
    } else {
        let n = length.ok_or("response without length")?;
        if n > RESPONSE_BYTES_MAX {
            return Err("response too long".into());
        }
        let mut body = vec![0; n];
        conn.r
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        body
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok((conn, code, body, keep))
}

/// Reads one CRLF-terminated line into `line` (cleared first); EOF is an error.
async fn read_line(r: &mut BufReader<OwnedReadHalf>, line: &mut String) -> Result<(), String> {
    line.clear();
    let n = r.read_line(line).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    if line.len() > RESPONSE_BYTES_MAX {
        return Err("header line too long".into());
    }
    Ok(())
}

/// Standard base64 with padding (RFC 4648 section 4), as etcd's gateway expects for bytes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn status_parses_string_numbers() {
        let body = r#"{"header":{"member_id":"7","raft_term":"2"},"leader":"7","raftTerm":"2","raftAppliedIndex":"5"}"#;
        let s = MemberStatus::parse(body).unwrap();
        assert_eq!((s.member_id, s.leader, s.term, s.applied), (7, 7, 2, 5));
        assert!(s.is_leader());
    }
}

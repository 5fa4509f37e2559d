//! The two systems under test, as the cluster benchmarks drive them: which
//! system ([`System`]), its running processes ([`Clusters`]), one client
//! connection of either ([`BenchClient`]), a closed-loop throughput run
//! ([`throughput`]) and the process figures read from `/proc`.
//!
//! May not touch a node's internals: nodes are `oncekv serve` processes reached
//! over [`crate::tcp::Client`], as etcd is reached over its gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::etcd::{EtcdClient, EtcdCluster};
use super::latency::{Samples, Summary};
use super::procs::OncekvCluster;
use crate::protocol::Reply;
use crate::tcp::Client;

/// Which system a run targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum System {
    Oncekv,
    Etcd,
}

impl System {
    pub(super) fn name(self) -> &'static str {
        match self {
            System::Oncekv => "oncekv",
            System::Etcd => "etcd",
        }
    }
}

/// The clusters under test: both, alive for the whole run, or (in a sweep) the
/// one measured at the moment.
pub(super) struct Clusters {
    /// `None` while only etcd is measured (a sweep point).
    pub(super) oncekv: Option<OncekvCluster>,
    /// `None` under `--oncekv-only` and while only oncekv is measured.
    pub(super) etcd: Option<EtcdCluster>,
}

/// How long a cluster may take to agree on a leader after a start or restart.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
impl Clusters {
    /// The etcd cluster, or an error under `--oncekv-only`.
    pub(super) fn etcd(&self) -> anyhow::Result<&EtcdCluster> {
        self.etcd
            .as_ref()
            .context("etcd was not started (--oncekv-only)")
    }

    /// The oncekv cluster, or an error while only etcd runs.
    pub(super) fn oncekv(&self) -> anyhow::Result<&OncekvCluster> {
        self.oncekv.as_ref().context("oncekv was not started")
    }

    /// Waits until `system` settles; returns its leader's index.
    pub(super) async fn settle(&self, system: System) -> anyhow::Result<usize> {
        match system {
            System::Oncekv => self.oncekv()?.wait_settled(SETTLE_TIMEOUT).await,
            System::Etcd => self.etcd()?.wait_settled(SETTLE_TIMEOUT).await,
        }
    }

    /// A connected client for `system` sending to node `leader` first.
    pub(super) async fn client(
        &self,
        system: System,
        leader: usize,
        tight: Option<Tight>,
    ) -> anyhow::Result<BenchClient> {
        match system {
            System::Oncekv => {
                let mut opts = self.oncekv()?.client_options();
                if let Some(t) = tight {
                    opts.retry_backoff = t.backoff;
                    opts.attempt_timeout = t.attempt_timeout.unwrap_or(opts.attempt_timeout);
                }
                let mut c = Client::new(opts);
                c.open_session().await?;
                let found = c.find_leader().await;
                anyhow::ensure!(found == Some(leader), "oncekv leader moved: {found:?}");
                Ok(BenchClient::Oncekv(Box::new(c)))
            }
            System::Etcd => {
                let mut c = EtcdClient::new(self.etcd()?.endpoints());
                if let Some(t) = tight {
                    c.retry_backoff = t.backoff;
                    c.attempt_timeout = t.attempt_timeout.unwrap_or(c.attempt_timeout);
                }
                c.set_target(leader);
                Ok(BenchClient::Etcd(c))
            }
        }
    }

    /// The pids of `system`'s server processes.
    pub(super) fn pids(&self, system: System) -> Vec<u32> {
        match system {
            System::Oncekv => (self.oncekv.as_ref())
                .map(OncekvCluster::pids)
                .unwrap_or_default(),
            System::Etcd => self
                .etcd
                .as_ref()
                .map(EtcdCluster::pids)
                .unwrap_or_default(),
        }
    }

    /// SIGKILLs node `i` of `system`.
    pub(super) fn kill(&mut self, system: System, i: usize) {
        match system {
            System::Oncekv => {
                if let Some(o) = &mut self.oncekv {
                    o.kill(i)
                }
            }
            System::Etcd => {
                if let Some(e) = &mut self.etcd {
                    e.kill(i)
                }
            }
        }
    }

    /// Restarts node `i` of `system` on its data directory.
    pub(super) fn restart(&mut self, system: System, i: usize) -> std::io::Result<()> {
        match system {
            System::Oncekv => match &mut self.oncekv {
                Some(o) => o.restart(i),
                None => Ok(()),
            },
            System::Etcd => match &mut self.etcd {
                Some(e) => e.restart(i),
                None => Ok(()),
            },
        }
    }
}

/// Retry timing of a failover writer, the same for both systems.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tight {
    /// First pause between attempts.
    pub(super) backoff: Duration,
    /// Per-attempt timeout (the client's default if `None`).
    pub(super) attempt_timeout: Option<Duration>,
}

/// One client connection of either system.
pub(super) enum BenchClient {
    Oncekv(Box<Client>),
    Etcd(EtcdClient),
}

impl BenchClient {
    /// Writes `value` at `key` until a definite answer or the client's deadline.
    pub(super) async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        match self {
            BenchClient::Oncekv(c) => match c.write(json!(key), json!(value)).await {
                Ok(Reply::WriteOk) => Ok(()),
                Ok(other) => Err(other.to_string()),
                Err(e) => Err(e.to_string()),
            },
            BenchClient::Etcd(c) => c.put(key.as_bytes(), value.as_bytes()).await,
        }
    }
}

/// One throughput run: `clients` writers in closed loops; operations that start after
/// the warm-up and finish inside the window are counted. Each client writes its own
/// 16 keys, or (`keys` > 0) keys `k0`..`k{keys-1}` drawn at random. Returns the
/// summary, the errors, and the servers' CPU time per counted operation in
/// microseconds.
pub(super) async fn throughput(
    clusters: &Clusters,
    system: System,
    clients: usize,
    value: &Arc<str>,
    (warmup, window): (Duration, Duration),
    keys: u64,
) -> anyhow::Result<(Summary, u64, f64)> {
    let leader = clusters.settle(system).await?;
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(clusters.client(system, leader, None).await?);
    }
    let start = Instant::now() + warmup;
    let end = start + window;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut w)| {
            let value = value.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                let mut errors = 0u64;
                // xorshift64, seeded per client: which keys is not a figure.
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                for i in 0u64.. {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let key = if keys == 0 {
                        format!("bench-{c}-{}", i % 16)
                    } else {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        format!("k{}", rng % keys)
                    };
                    let ok = w.put(&key, &value).await.is_ok();
                    let t1 = Instant::now();
                    if !ok {
                        errors += 1;
                    } else if t0 >= start && t1 <= end {
                        samples.push(t1 - t0);
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    // The servers' CPU time over the measured window.
    let pids = clusters.pids(system);
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = cpu_time(&pids);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_time(&pids).saturating_sub(cpu_start);
    let mut all = Samples::default();
    let mut errors = 0;
    for t in tasks {
        let (s, e) = t.await?;
        all.extend(s);
        errors += e;
    }
    let summary = all.summary(window);
    let ops = summary.ops_per_s * window.as_secs_f64();
    let cpu_us_per_op = if ops > 0.0 {
        cpu.as_secs_f64() * 1e6 / ops
    } else {
        f64::NAN
    };
    Ok((summary, errors, cpu_us_per_op))
}

/// CPU time (user + system) the processes `pids` have used so far, from
/// `/proc/PID/stat`; processes that are gone count as zero.
pub(super) fn cpu_time(pids: &[u32]) -> Duration {
    // USER_HZ: 100 on every Linux architecture this runs on.
    const TICKS_PER_S: u64 = 100;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which ends at the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line (11, 12 here).
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_S)
}

/// Milliseconds with one decimal.
pub(super) fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The 1-minute load average, for the report's context.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A loopback port free at the time of asking (bound, then released).
pub(super) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

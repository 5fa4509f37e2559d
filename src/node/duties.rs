//! The node's background duties: while leader, a GC entry when some session is
//! idle past the timeout and the replicated limits kept equal to this node's
//! config; on every node, the in-memory log kept within its byte budget
//! (snapshot, then purge). It may not serve clients' requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::Fatal;

use super::Node;
use crate::config::Config;
use crate::raft::TypeConfig;
use crate::raft::log_store::SharedMirror;
use crate::state::{Command, Op};

/// How often the log's byte budget is checked, in heartbeats.
const LOG_BUDGET_PERIOD_HEARTBEATS: u64 = 2;

/// How long a snapshot build asked for may take before, the snapshot not having
/// moved, it is asked for again (the build may have failed). Asking at every
/// check would ask again while a build of a large state still runs.
const SNAPSHOT_BUILD_WAIT: Duration = Duration::from_secs(10);

/// Why a duty task died by panicking, shared between the task's watcher and
/// [`Node::fatal`].
#[derive(Debug, Clone, Default)]
pub(super) struct DutyFailure(Arc<std::sync::Mutex<Option<String>>>);

impl DutyFailure {
    /// The failure, if a duty panicked.
    pub(super) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, why: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// Spawns one of the node's periodic duties. A duty that panics is not left
/// dead while the node runs on without it (a log that is never snapshotted
/// again fills the disk): the panic is recorded in `failed`, and
/// [`Node::fatal`] ends the process with it.
pub(super) fn spawn_duty(
    failed: DutyFailure,
    name: &'static str,
    duty: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let task = tokio::spawn(duty);
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            let panic = e.into_panic();
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let why = format!("the node's {name} task panicked: {text}");
            tracing::error!("{why}");
            failed.set(why);
        }
    });
}

impl Node {
    /// Keeps the in-memory log within its byte budget: builds a snapshot once the
    /// applied entries after the last one are due one ([`snapshot_due`]), and purges
    /// entries behind the snapshot beyond `log_kept_behind_snapshot_bytes`
    /// (openraft's own policy counts entries only).
    pub(super) fn spawn_log_budget(self: Arc<Self>, mirror: SharedMirror) {
        let weak = Arc::downgrade(&self);
        let period =
            Duration::from_millis(self.config.heartbeat_interval_ms * LOG_BUDGET_PERIOD_HEARTBEATS);
        let failed = self.duty_failed.clone();
        drop(self);
        spawn_duty(failed, "log budget", async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut budget = LogBudget {
                mirror,
                asked: None,
                purge_asked: 0,
            };
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.snapshots_in.sweep().await;
                if budget.check(&node).await.is_err() {
                    return;
                }
            }
        });
    }

    /// While leader: append a GC entry when some session is idle past the timeout,
    /// and make the replicated limits match this node's config.
    pub(super) fn spawn_leader_duties(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let period = Duration::from_millis(self.config.gc_interval_ms);
        let failed = self.duty_failed.clone();
        drop(self);
        spawn_duty(failed, "leader duties", async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                #[cfg(test)]
                if crate::planted::active(crate::planted::Bug::GcByLocalClock) {
                    let now = node.clock.now_ms();
                    node.sm
                        .planted_local_gc(now.saturating_sub(node.config.session_timeout_ms));
                    continue;
                }
                if node.leader() == Some(node.id) {
                    node.leader_tick().await;
                }
            }
        });
    }

    async fn leader_tick(&self) {
        let (limits, oldest) = {
            let a = self.sm.read();
            (a.state.limits, a.state.sessions.oldest_last_seen_ms())
        };
        let deadline = Instant::now() + self.config.request_timeout();
        if limits != self.config.limits {
            let _ = self
                .propose_local(Op::SetLimits(self.config.limits), deadline, false)
                .await;
        }
        let ts = self.next_ts_ms();
        let cutoff_ms = ts.saturating_sub(self.config.session_timeout_ms);
        let max = Some(self.config.gc_sessions_per_entry_max);
        let mut oldest = oldest;
        // One bounded entry after another while idle sessions remain: each is
        // applied on its own, so writes proposed meanwhile go in between, and
        // after each the GC yields for its share (`gc_busy_percent_max`). Up to
        // one tick's worth of entries; the next tick goes on.
        let until = Instant::now() + Duration::from_millis(self.config.gc_interval_ms);
        let mut pause = Duration::ZERO;
        while oldest.is_some_and(|o| o < cutoff_ms)
            && Instant::now().checked_add(pause).is_some_and(|t| t < until)
        {
            tokio::time::sleep(pause).await;
            let cmd = Command::new(ts, Op::Gc { cutoff_ms, max });
            let sent = Instant::now();
            match tokio::time::timeout(self.config.request_timeout(), self.raft.client_write(cmd))
                .await
            {
                Ok(Ok(_)) => pause = gc_pause(sent.elapsed(), self.config.gc_busy_percent_max),
                Ok(Err(e)) => {
                    tracing::debug!("gc entry not committed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("gc entry not committed in time");
                    return;
                }
            }
            oldest = self.sm.read().state.sessions.oldest_last_seen_ms();
        }
    }
}

/// How long the GC waits after an entry that took `took` from proposal to
/// applied, so that its entries are in flight at most `busy_percent` of the time.
fn gc_pause(took: Duration, busy_percent: u64) -> Duration {
    let p = busy_percent.clamp(1, 100);
    let idle = u32::try_from(100 - p).expect("at most 99");
    took.saturating_mul(idle) / u32::try_from(p).expect("at most 100")
}

/// What the log budget task remembers between checks.
struct LogBudget {
    /// The log's in-memory copy, with each entry's size.
    mirror: SharedMirror,
    /// The snapshot a build was last asked after, and when.
    asked: Option<(Option<u64>, Instant)>,
    /// The index a purge was last asked up to.
    purge_asked: u64,
}

impl LogBudget {
    /// One check: asks for a snapshot once the applied entries after the last
    /// one are due one ([`snapshot_due`]; again only if a build asked for is
    /// overdue), and for a purge once the entries kept behind the snapshot pass
    /// `log_kept_behind_snapshot_bytes`. Err once Raft has stopped.
    async fn check(&mut self, node: &Node) -> Result<(), Fatal<TypeConfig>> {
        let (snapshot, applied) = {
            let m = node.raft.metrics();
            let m = m.borrow_watched();
            (m.snapshot.map(|l| l.index), m.last_applied.map(|l| l.index))
        };
        let c = &node.config;
        let (after, purge_to) = {
            let m = crate::raft::log_store::lock(&self.mirror);
            let after = match (snapshot, applied) {
                (_, None) => 0,
                (s, Some(a)) => m.bytes_in(s, a),
            };
            let purge_to =
                snapshot.and_then(|s| m.purge_point(s, c.log_kept_behind_snapshot_bytes));
            (after, purge_to)
        };
        let building = self
            .asked
            .is_some_and(|(s, at)| s == snapshot && at.elapsed() < SNAPSHOT_BUILD_WAIT);
        let entries = applied.map_or(0, |a| a.saturating_sub(snapshot.unwrap_or(0)));
        let due = snapshot_due(
            after,
            entries,
            node.sm
                .durable_snapshots()
                .then(|| node.sm.snapshot_bytes()),
            c,
        );
        if due && !building {
            self.asked = Some((snapshot, Instant::now()));
            tracing::info!(
                "{after} bytes in {entries} entries since the last snapshot: building one"
            );
            node.raft.trigger().snapshot().await?;
        }
        if let Some(p) = purge_to.filter(|p| *p > self.purge_asked) {
            self.purge_asked = p;
            node.raft.trigger().purge_log(p).await?;
        }
        Ok(())
    }
}

/// Whether a snapshot is due with `bytes` of log in `entries` entries applied
/// since the last one. Always past `log_bytes_max` (the in-memory log's bound).
/// Without durable snapshots (Maelstrom mode) past `snapshot_every_bytes`, and
/// openraft counts the entries itself. With durable snapshots of `last` bytes
/// (TCP mode) after `snapshot_every_entries` entries or `snapshot_every_bytes`
/// bytes, but only once the log since has grown as large as that snapshot: a
/// large state is then written about once per its own size of log (a
/// 1,000,000-session state, 73 MB, was written every 20,000 entries, back to
/// back; a gigabyte of 1 MB values every 64 MiB of writes).
fn snapshot_due(bytes: u64, entries: u64, last: Option<u64>, c: &Config) -> bool {
    if bytes >= c.log_bytes_max {
        return true;
    }
    match last {
        Some(last) => {
            (entries >= c.snapshot_every_entries || bytes > c.snapshot_every_bytes) && bytes >= last
        }
        None => bytes > c.snapshot_every_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duty that panics is recorded for `Node::fatal` (which ends the
    /// process), not left dead while the node runs on without it.
    #[tokio::test]
    async fn a_panicking_duty_is_recorded_as_fatal() {
        let failed = DutyFailure::default();
        spawn_duty(failed.clone(), "test", async {
            panic!("range start > end")
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while failed.get().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let why = failed.get().expect("the panic is recorded");
        assert!(
            why.contains("test task panicked: range start > end"),
            "{why}"
        );
        // A duty that ends normally records nothing.
        let quiet = DutyFailure::default();
        spawn_duty(quiet.clone(), "quiet", async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(quiet.get(), None);
    }

    #[test]
    fn a_large_durable_state_is_snapshotted_once_per_its_own_size_of_log() {
        let c = Config {
            snapshot_every_entries: 100,
            snapshot_every_bytes: 10_000,
            log_bytes_max: 50_000,
            ..Config::default()
        };
        // The byte bound of the in-memory log, whatever else.
        assert!(snapshot_due(50_000, 1, None, &c));
        assert!(snapshot_due(50_000, 1, Some(1 << 30), &c));
        // Without durable snapshots, past snapshot_every_bytes; openraft
        // counts entries: nothing here.
        assert!(snapshot_due(10_001, 1, None, &c));
        assert!(!snapshot_due(5_000, 1_000, None, &c));
        // Durable: past snapshot_every_bytes only once the log since is as
        // large as the last snapshot (a large state of large values).
        assert!(snapshot_due(10_001, 1, Some(10_000), &c));
        assert!(!snapshot_due(10_001, 1, Some(30_000), &c));
        assert!(snapshot_due(30_000, 1, Some(30_000), &c));
        // A small durable snapshot: every 100 entries.
        assert!(snapshot_due(200, 100, Some(150), &c));
        assert!(!snapshot_due(200, 99, Some(150), &c));
        // A large one: not before the log since it is as large as it.
        assert!(!snapshot_due(5_000, 1_000, Some(8_000), &c));
        assert!(snapshot_due(8_000, 1_000, Some(8_000), &c));
    }

    #[test]
    fn the_gc_yields_for_its_share_of_the_time() {
        let ms = Duration::from_millis;
        // Half: as long again as the entry took.
        assert_eq!(gc_pause(ms(4), 50), ms(4));
        // Back to back at 100.
        assert_eq!(gc_pause(ms(4), 100), Duration::ZERO);
        // A quarter: three times as long; 1%: 99 times.
        assert_eq!(gc_pause(ms(4), 25), ms(12));
        assert_eq!(gc_pause(ms(1), 1), ms(99));
        // Out of range is clamped (validate refuses it): no panic, no overflow.
        assert_eq!(gc_pause(ms(1), 0), ms(99));
        assert_eq!(gc_pause(Duration::MAX, 1), Duration::MAX);
        assert_eq!(gc_pause(ms(4), u64::MAX), Duration::ZERO);
    }
}

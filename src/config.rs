//! Every timeout and bound of a node, in one place, with `validate()`.
//!
//! Maelstrom runs the binary with no arguments, so overrides come from environment
//! variables named after the fields (`ONCEKV_SESSION_TIMEOUT_MS=5000`).

use std::time::Duration;

use crate::state::SessionLimits;

/// The largest log entry (its JSON) a batch must be able to hold: a request
/// line of up to 1 MiB, plus the entry's own fields (log id, session, time).
pub const ENTRY_BYTES_MAX: u64 = (1 << 20) + (64 << 10);
/// Room for a peer RPC's envelope and fields around its entries or chunk.
pub const RPC_ENVELOPE_BYTES: u64 = 64 << 10;
/// The largest peer RPC line any valid config produces.
pub const PEER_RPC_BYTES_LIMIT: u64 = 64 << 20;
// The WAL must hold the largest entry as one record.
const _: () = assert!(ENTRY_BYTES_MAX <= crate::storage::wal::RECORD_BYTES_MAX as u64);

/// Node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Leader heartbeat period. Short, because Maelstrom's partitions come and go in
    /// seconds and a quick failover is availability.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout (several heartbeats).
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout. openraft also uses it as the
    /// leader lease (followers refuse votes until it has passed since they last heard
    /// the leader), so a failover costs about this plus one timeout: 150-300 ms gave a
    /// median of ~0.6 s against ~0.9 s for 250-500 (docs/benchmarks.md).
    pub election_timeout_max_ms: u64,
    /// How long a proposal or a forwarded request may wait before the node answers
    /// with an indefinite error. Below Maelstrom's 1 s client timeout would be
    /// pointless (it records info either way); above it keeps late commits answerable.
    pub request_timeout_ms: u64,
    /// Deadline of one Raft RPC to a peer (openraft passes its own TTL; this caps it).
    pub rpc_timeout_ms: u64,
    /// Sessions idle this long (in cluster time) are removed by the next GC entry.
    pub session_timeout_ms: u64,
    /// How often the leader appends a GC entry.
    pub gc_interval_ms: u64,
    /// Replicated bounds of the session table (proposed to the log by a leader whose
    /// config differs from the state's).
    pub limits: SessionLimits,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, so a slightly lagging follower catches up
    /// from the log rather than by a whole snapshot.
    pub log_kept_behind_snapshot: u64,
    /// Capacity of the outgoing message queue (back-pressure on the reader).
    pub outbox_capacity: usize,
    /// Most client requests in flight at once on one node; the reader waits past it.
    pub requests_in_flight_max: usize,
    /// Most bytes of log entries (their JSON) in one append RPC to a follower.
    /// openraft bounds a batch by count only (`max_payload_entries`, 300): with
    /// 300 KB values that is a 90 MB line that cannot arrive within any sane
    /// deadline, so a lagging follower never caught up. A batch always holds at
    /// least one entry, so the largest entry (a request's size plus a little)
    /// must fit too: see [`Config::peer_rpc_bytes_max`].
    pub append_batch_bytes_max: u64,
    /// Deadline of one append RPC that carries entries, and of one snapshot chunk.
    /// openraft gives a replication RPC only its heartbeat interval (50 ms), which a
    /// batch of large entries plus the follower's fsync can exceed on a busy
    /// machine; bare heartbeats and votes keep openraft's deadline.
    pub append_timeout_ms: u64,
    /// Bytes of snapshot data per `raft_snapshot` chunk. A snapshot travels in
    /// chunks, each its own RPC with its own deadline (`append_timeout_ms`), so a
    /// large state needs neither one huge line nor one long deadline.
    pub snapshot_chunk_bytes: u64,
    /// Incoming snapshot transfers a follower keeps at once (each a partial file
    /// in the data dir); a transfer beyond it replaces the least recently active.
    pub snapshot_transfers_max: u64,
    /// A partial incoming snapshot not extended for this long is deleted.
    pub snapshot_transfer_idle_ms: u64,
    /// Build a snapshot once the log after the last one holds this many bytes of
    /// entries, even before `snapshot_every_entries` (large values).
    pub snapshot_every_bytes: u64,
    /// Bytes of entries kept behind a snapshot at most (`log_kept_behind_snapshot`
    /// counts entries; with large values that count alone kept gigabytes). With
    /// `snapshot_every_bytes` this bounds the in-memory log: about their sum plus
    /// what arrived since the last check.
    pub log_kept_behind_snapshot_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            request_timeout_ms: 1_000,
            rpc_timeout_ms: 1_000,
            session_timeout_ms: 300_000,
            gc_interval_ms: 1_000,
            limits: SessionLimits::default(),
            snapshot_every_entries: 20_000,
            log_kept_behind_snapshot: 1_000,
            outbox_capacity: 65_536,
            requests_in_flight_max: 65_536,
            append_batch_bytes_max: 2 << 20,
            append_timeout_ms: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_transfers_max: 2,
            snapshot_transfer_idle_ms: 30_000,
            snapshot_every_bytes: 64 << 20,
            log_kept_behind_snapshot_bytes: 16 << 20,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The defaults with `ONCEKV_*` environment overrides applied.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let vars: [(&str, &mut u64); 19] = [
            ("HEARTBEAT_INTERVAL_MS", &mut c.heartbeat_interval_ms),
            ("ELECTION_TIMEOUT_MIN_MS", &mut c.election_timeout_min_ms),
            ("ELECTION_TIMEOUT_MAX_MS", &mut c.election_timeout_max_ms),
            ("REQUEST_TIMEOUT_MS", &mut c.request_timeout_ms),
            ("RPC_TIMEOUT_MS", &mut c.rpc_timeout_ms),
            ("SESSION_TIMEOUT_MS", &mut c.session_timeout_ms),
            ("GC_INTERVAL_MS", &mut c.gc_interval_ms),
            ("SESSIONS_MAX", &mut c.limits.sessions_max),
            (
                "REPLIES_PER_SESSION_MAX",
                &mut c.limits.replies_per_session_max,
            ),
            ("TOMBSTONES_MAX", &mut c.limits.tombstones_max),
            ("SNAPSHOT_EVERY_ENTRIES", &mut c.snapshot_every_entries),
            ("LOG_KEPT_BEHIND_SNAPSHOT", &mut c.log_kept_behind_snapshot),
            ("APPEND_BATCH_BYTES_MAX", &mut c.append_batch_bytes_max),
            ("APPEND_TIMEOUT_MS", &mut c.append_timeout_ms),
            ("SNAPSHOT_CHUNK_BYTES", &mut c.snapshot_chunk_bytes),
            ("SNAPSHOT_TRANSFERS_MAX", &mut c.snapshot_transfers_max),
            (
                "SNAPSHOT_TRANSFER_IDLE_MS",
                &mut c.snapshot_transfer_idle_ms,
            ),
            ("SNAPSHOT_EVERY_BYTES", &mut c.snapshot_every_bytes),
            (
                "LOG_KEPT_BEHIND_SNAPSHOT_BYTES",
                &mut c.log_kept_behind_snapshot_bytes,
            ),
        ];
        for (name, slot) in vars {
            let var = format!("ONCEKV_{name}");
            if let Ok(text) = std::env::var(&var) {
                *slot = text
                    .parse()
                    .map_err(|e| ConfigError(format!("{var}={text}: {e}")))?;
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |s: &str| Err(ConfigError(s.to_string()));
        if self.heartbeat_interval_ms == 0 {
            return fail("heartbeat_interval_ms must be positive");
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return fail("election_timeout_min_ms must exceed heartbeat_interval_ms");
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return fail("election_timeout_max_ms must exceed election_timeout_min_ms");
        }
        if self.request_timeout_ms == 0 || self.rpc_timeout_ms == 0 {
            return fail("timeouts must be positive");
        }
        if self.gc_interval_ms == 0 || self.session_timeout_ms == 0 {
            return fail("gc_interval_ms and session_timeout_ms must be positive");
        }
        if self.limits.sessions_max == 0 || self.limits.replies_per_session_max == 0 {
            return fail("sessions_max and replies_per_session_max must be positive");
        }
        if self.outbox_capacity == 0 || self.requests_in_flight_max == 0 {
            return fail("queue capacities must be positive");
        }
        // One entry always fits a batch: the largest the log accepts.
        if self.append_batch_bytes_max < ENTRY_BYTES_MAX {
            return fail(
                "append_batch_bytes_max must be at least the largest entry (1 MiB + 64 KiB)",
            );
        }
        if self.peer_rpc_bytes_max() > PEER_RPC_BYTES_LIMIT {
            return fail(
                "append_batch_bytes_max and snapshot_chunk_bytes must keep a peer RPC within 64 MiB",
            );
        }
        if self.snapshot_chunk_bytes < 4096 {
            return fail("snapshot_chunk_bytes must be at least 4096");
        }
        if self.append_timeout_ms == 0 || self.snapshot_transfer_idle_ms <= self.append_timeout_ms {
            return fail(
                "snapshot_transfer_idle_ms must exceed append_timeout_ms (a chunk in flight is not stale)",
            );
        }
        if self.snapshot_transfers_max == 0 {
            return fail("snapshot_transfers_max must be positive");
        }
        // A snapshot is triggered by bytes only past one batch, or every batch
        // would build one.
        if self.snapshot_every_bytes < self.append_batch_bytes_max {
            return fail("snapshot_every_bytes must be at least append_batch_bytes_max");
        }
        Ok(())
    }

    /// The openraft configuration derived from this one.
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let c = openraft::Config {
            cluster_name: "oncekv".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.rpc_timeout_ms.max(1_000),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_kept_behind_snapshot,
            // A node partitioned away and back must not disrupt a healthy leader.
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        c.validate().map_err(|e| ConfigError(e.to_string()))
    }

    /// The longest peer RPC line this config makes a node send (an append batch or
    /// one entry, whichever is larger; a snapshot chunk, whose JSON text at most
    /// doubles when escaped into a string), plus the envelope. A peer's line
    /// limit must be at least this.
    pub fn peer_rpc_bytes_max(&self) -> u64 {
        let batch = self.append_batch_bytes_max.max(ENTRY_BYTES_MAX);
        batch.max(2 * self.snapshot_chunk_bytes) + RPC_ENVELOPE_BYTES
    }

    /// [`Config::append_timeout_ms`] as a duration.
    pub fn append_timeout(&self) -> Duration {
        Duration::from_millis(self.append_timeout_ms)
    }

    /// [`Config::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_relations_do_not() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert!(Config::default().raft_config().is_ok());
        let c = Config {
            election_timeout_max_ms: 100,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn byte_bounds_relate_to_the_largest_entry_and_each_other() {
        let bad = |c: Config| assert!(c.validate().is_err(), "{c:?}");
        let d = Config::default;
        bad(Config {
            append_batch_bytes_max: ENTRY_BYTES_MAX - 1,
            ..d()
        });
        bad(Config {
            append_batch_bytes_max: PEER_RPC_BYTES_LIMIT,
            ..d()
        });
        bad(Config {
            snapshot_chunk_bytes: 100,
            ..d()
        });
        bad(Config {
            snapshot_transfer_idle_ms: d().append_timeout_ms,
            ..d()
        });
        bad(Config {
            snapshot_every_bytes: d().append_batch_bytes_max - 1,
            ..d()
        });
        // A peer's line limit must hold the largest RPC: 2 MiB + 64 KiB by default.
        assert_eq!(d().peer_rpc_bytes_max(), (2 << 20) + (64 << 10));
    }
}

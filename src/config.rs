//! Every timeout and bound of a node, in one place, with `validate()`.
//!
//! Maelstrom runs the binary with no arguments, so overrides come from environment
//! variables named after the fields (`ONCEKV_SESSION_TIMEOUT_MS=5000`).
//!
//! Owns every [`Config`] field (its default, its override, its doc comment saying
//! why), `validate()` with the relations between limits, and the constants the
//! limits are built from ([`LOG_RECORD_BYTES_MAX`], [`BATCH_MAX`]). Every layer
//! but the state machine imports it, so it may import nothing above that: only
//! the state machine's [`SessionLimits`] and `reject_log`'s defaults.

use std::time::Duration;

use crate::state::SessionLimits;

/// Room for a peer RPC's envelope and fields around its entries or chunk.
pub const RPC_ENVELOPE_BYTES: u64 = 64 << 10;
/// The largest peer RPC line any valid config produces.
pub const PEER_RPC_BYTES_LIMIT: u64 = 64 << 20;

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
    /// When a follower learns that its leader's process is gone (its connection
    /// closed and its port refuses connections; see docs/architecture.md), it
    /// waits this many ms per rank (its place among the other voters, by id)
    /// and then stands for election without waiting out the lease; voters that
    /// learnt the same grant it despite the lease. The wait lets the other
    /// followers learn it too and keeps them from standing at once. 0 turns
    /// the fast path off. Below half the lowest election timeout.
    pub leader_gone_stagger_ms: u64,
    /// How long a proposal or a forwarded request may wait before the node answers
    /// with an indefinite error. Below Maelstrom's 1 s client timeout would be
    /// pointless (it records info either way); above it keeps late commits answerable.
    pub request_timeout_ms: u64,
    /// Sessions idle this long (in cluster time) are removed by the next GC entry.
    pub session_timeout_ms: u64,
    /// How often the leader appends a GC entry.
    pub gc_interval_ms: u64,
    /// Most sessions one GC entry expires (the longest idle first). Applying an
    /// entry holds up every entry behind it, writes included, so a mass expiry
    /// is spread over several entries, appended one after another while idle
    /// sessions remain. Expiring one session costs about half a microsecond
    /// (docs/benchmarks.md), so an entry of 250 applies in about 0.1 ms.
    pub gc_sessions_per_entry_max: u64,
    /// Most of the leader's time, in percent, that a mass expiry keeps a GC
    /// entry in flight (`ONCEKV_GC_BUSY_PERCENT_MAX`, 1 to 100). Each GC entry is
    /// a full round of the log (append, fsync on a majority, apply), and a
    /// write arriving meanwhile waits behind it; so after an entry that took t
    /// from proposal to applied, the next is proposed only t × (100 − p) / p
    /// later. Under load t grows, and the GC yields more; at 100 the entries go
    /// back to back. Expiring n sessions takes at least
    /// n / `gc_sessions_per_entry_max` rounds at this share.
    pub gc_busy_percent_max: u64,
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
    /// Most client requests in flight at once on one node (both transports; in
    /// TCP mode all connections together); the reader waits past it, so clients
    /// cannot pile up pending requests without bound.
    pub requests_in_flight_max: usize,
    /// Most bytes of client requests in flight at once on one node
    /// (`ONCEKV_REQUESTS_IN_FLIGHT_BYTES_MAX`; both transports, all connections
    /// together): each request counts its line's bytes plus
    /// [`IN_FLIGHT_OVERHEAD_BYTES`]; the reader waits past it. With the count bound
    /// alone, 65,536 requests of 1 MiB could be held at once.
    pub requests_in_flight_bytes_max: usize,
    /// Longest client request line, in bytes (`ONCEKV_REQUEST_BYTES_MAX`), on
    /// either transport. A longer line is refused with error 12 before anything is
    /// proposed, and is never held whole in memory. Also bounds what the log keeps
    /// of one request: its entry may take at most [`ENTRY_SLACK_BYTES`] more, so
    /// every entry fits a log record ([`LOG_RECORD_BYTES_MAX`], 4 MiB;
    /// checked by `validate`), and a read reply stays within the client's limit.
    pub request_bytes_max: usize,
    /// Most bytes of client lines being received at once on one TCP node
    /// (`ONCEKV_LINE_BUFFERS_BYTES_MAX`; all client connections together): a
    /// line's bytes past the first 16 KiB count from when they arrive until the
    /// connection reads its next line, so lines sent slowly or never finished,
    /// and whole lines waiting for room in flight, cannot hold memory without
    /// bound. A line that finds no room is dropped unread and its sender gets
    /// error 11 (nothing was proposed). At least `request_bytes_max`.
    pub line_buffers_bytes_max: usize,
    /// Most bytes of large replies built but not yet written, on one node
    /// (`ONCEKV_REPLY_BUFFERS_BYTES_MAX`; all connections together): a reply of
    /// more than [`REPLY_BYTES_UNCHARGED`] (only `read_ok` can be) counts from
    /// when it is ready until its line is written, so clients that pipeline
    /// reads of large values and never read the replies cannot hold memory
    /// without bound. A read whose reply finds no room gets error 11 instead (a
    /// read changes nothing). At least `request_bytes_max`.
    pub reply_buffers_bytes_max: usize,
    /// Longest line from a peer node, in bytes (`ONCEKV_PEER_LINE_BYTES_MAX`): a TCP
    /// connection gets it once its `peer_hello` is accepted (before, it is a
    /// client's), and Maelstrom mode gives it to lines from members. An append
    /// carries at most `append_batch_bytes_max` of entries (or one entry of the
    /// largest size), a snapshot chunk at most `snapshot_chunk_bytes`: `validate`
    /// checks it holds [`Config::peer_rpc_bytes_max`] and a forwarded request.
    pub peer_line_bytes_max: usize,
    /// Most bytes of requests (their lines) proposed to Raft as one batch
    /// (`ONCEKV_BATCH_BYTES_MAX`), besides the count bound: one batch is one append
    /// to the log and one burst of replication, which must not grow to hundreds
    /// of MiB when large requests arrive back to back. At least one request of
    /// [`Config::request_bytes_max`].
    pub batch_bytes_max: usize,
    /// Messages about rejected input ([`crate::reject!`]) logged per second, past
    /// the burst: input from outside must not turn into log bytes at its own rate.
    pub rejected_log_per_s: u64,
    /// Such messages logged back to back before the rate applies.
    pub rejected_log_burst: u64,
    /// Longest such message, in bytes (the rest is cut, its length said): a
    /// 100 MB line must not become a 100 MB log line.
    pub rejected_log_excerpt_bytes: usize,
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
    /// entries, even before `snapshot_every_entries` (large values). A `serve`
    /// node (durable snapshots) also waits until the log since is as large as
    /// the last snapshot, up to `log_bytes_max`: a state of a gigabyte is not
    /// written out again per 64 MiB of writes.
    pub snapshot_every_bytes: u64,
    /// Bytes of entries after the last snapshot past which one is built whatever
    /// else (`ONCEKV_LOG_BYTES_MAX`): with `log_kept_behind_snapshot_bytes`, the
    /// bound of the in-memory log. At least `snapshot_every_bytes`.
    pub log_bytes_max: u64,
    /// Bytes of entries kept behind a snapshot at most (`log_kept_behind_snapshot`
    /// counts entries; with large values that count alone kept gigabytes). With
    /// `log_bytes_max` this bounds the in-memory log: about their sum plus what
    /// arrived since the last check.
    pub log_kept_behind_snapshot_bytes: u64,
}

/// The largest record the durable log accepts (4 MiB). It lives here, not in
/// `storage`, because the limits on requests are built from it: `validate`
/// checks that the largest entry a config allows fits one record, and the log
/// (`storage::wal::RECORD_BYTES_MAX`) takes its bound from here.
pub const LOG_RECORD_BYTES_MAX: usize = 4 << 20;

/// How much larger than its request line a log entry may be (the leader's
/// timestamp, session fields, a key quoted as text). An op whose entry would be
/// larger than `request_bytes_max` plus this is refused with error 12.
pub const ENTRY_SLACK_BYTES: usize = 4 << 10;

/// What openraft wraps around a command in a log entry (log id, payload tag),
/// and what the log adds to a record (length, checksum, tag, index), with
/// room to spare. A test encodes an entry with the largest ids and checks it.
pub const ENTRY_WRAP_BYTES: usize = 1 << 10;

/// What a `forward` line adds around a forwarded op, with room to spare.
pub const FORWARD_WRAP_BYTES: usize = 4 << 10;

/// Most proposals handed to Raft as one batch (`client_write_many`): requests read
/// back to back while this node leads go to openraft's core as one message,
/// with one task awaiting their results, instead of one message, task and timer
/// each; that doubled single-node throughput (docs/benchmarks.md). The bound
/// keeps one batch (one append, one burst of replication, replies held until
/// its entries apply) short beside a request's deadline, next to
/// [`Config::batch_bytes_max`]. A batch holds one in-flight place per proposal,
/// so the driver never makes one larger than a place bound
/// ([`Config::requests_in_flight_max`], TCP's `requests_per_connection_max`):
/// asking for more places than exist would wait for ever.
pub const BATCH_MAX: usize = 256;

/// What a client request in flight is counted at besides its line's bytes, for
/// [`Config::requests_in_flight_bytes_max`]: about what one small request holds
/// while it waits (its parsed op, its log entry, its task and reply slot), as
/// measured on a single node (65,536 small requests in flight, ~64 MiB in use).
pub const IN_FLIGHT_OVERHEAD_BYTES: usize = 1024;

/// A reply up to this long (by [`crate::protocol::encode::body_bytes`]) does
/// not count against [`Config::reply_buffers_bytes_max`]: every reply but a
/// `read_ok` of a large value, so small replies never touch the shared count.
pub const REPLY_BYTES_UNCHARGED: usize = 16 << 10;

/// The longest timeout or interval accepted (one hour), in ms.
pub const DURATION_MS_MAX: u64 = 3_600_000;

/// The longest session timeout accepted (a year), in ms.
pub const SESSION_TIMEOUT_MS_MAX: u64 = 365 * 86_400_000;

/// The largest `gc_sessions_per_entry_max` accepted.
pub const GC_SESSIONS_PER_ENTRY_LIMIT: u64 = 1_000_000;

/// The smallest `request_bytes_max` accepted: ordinary requests must fit.
pub const REQUEST_BYTES_MIN: usize = 1 << 10;

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            leader_gone_stagger_ms: 25,
            request_timeout_ms: 1_000,
            session_timeout_ms: 300_000,
            gc_interval_ms: 1_000,
            gc_sessions_per_entry_max: 250,
            gc_busy_percent_max: 50,
            limits: SessionLimits::default(),
            snapshot_every_entries: 20_000,
            log_kept_behind_snapshot: 1_000,
            outbox_capacity: 65_536,
            requests_in_flight_max: 65_536,
            requests_in_flight_bytes_max: 32 << 20,
            request_bytes_max: 1 << 20,
            line_buffers_bytes_max: 128 << 20,
            reply_buffers_bytes_max: 128 << 20,
            peer_line_bytes_max: 8 << 20,
            batch_bytes_max: 4 << 20,
            rejected_log_per_s: crate::reject_log::DEFAULT_PER_S,
            rejected_log_burst: crate::reject_log::DEFAULT_BURST,
            rejected_log_excerpt_bytes: crate::reject_log::DEFAULT_EXCERPT_BYTES,
            append_batch_bytes_max: 2 << 20,
            append_timeout_ms: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_transfers_max: 2,
            snapshot_transfer_idle_ms: 30_000,
            snapshot_every_bytes: 64 << 20,
            log_bytes_max: 256 << 20,
            log_kept_behind_snapshot_bytes: 16 << 20,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);

/// Sets `slot` from the environment variable `var`, if it is set; a value that
/// does not parse is an error naming the variable.
pub fn env_override<T>(var: &str, slot: &mut T) -> Result<(), ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    SETTINGS_READ
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(var.to_string());
    if let Ok(text) = std::env::var(var) {
        *slot = text
            .parse()
            .map_err(|e| ConfigError(format!("{var}={text}: {e}")))?;
    }
    Ok(())
}

/// The settings [`env_override`] has looked up in this process.
static SETTINGS_READ: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// `ONCEKV_*` variables read other than as settings of [`env_override`].
const OTHER_VARS: [&str; 5] = [
    "ONCEKV_CLUSTER_KEY",
    "ONCEKV_PEERS",
    "ONCEKV_LOG",
    "ONCEKV_TEST_SEED",
    "ONCEKV_BLESS",
];

/// The `ONCEKV_*` variables set in this process's environment that nothing
/// reads (after the settings were loaded): a misspelled setting is otherwise
/// silently ignored.
pub fn unknown_env_vars() -> Vec<String> {
    let read = SETTINGS_READ.lock().unwrap_or_else(|p| p.into_inner());
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("ONCEKV_"))
        .filter(|k| !read.contains(k) && !OTHER_VARS.contains(&k.as_str()))
        .collect()
}

/// Warns on stderr of each variable [`unknown_env_vars`] finds.
pub fn warn_of_unknown_env_vars() {
    for var in unknown_env_vars() {
        crate::stderr_line!(
            "warning: {var} is set, but oncekv has no such setting (misspelled?); it is ignored"
        );
    }
}

impl Config {
    /// The defaults with `ONCEKV_*` environment overrides applied.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let vars: [(&str, &mut u64); 24] = [
            ("REJECTED_LOG_PER_S", &mut c.rejected_log_per_s),
            ("REJECTED_LOG_BURST", &mut c.rejected_log_burst),
            ("HEARTBEAT_INTERVAL_MS", &mut c.heartbeat_interval_ms),
            ("ELECTION_TIMEOUT_MIN_MS", &mut c.election_timeout_min_ms),
            ("ELECTION_TIMEOUT_MAX_MS", &mut c.election_timeout_max_ms),
            ("LEADER_GONE_STAGGER_MS", &mut c.leader_gone_stagger_ms),
            ("REQUEST_TIMEOUT_MS", &mut c.request_timeout_ms),
            ("SESSION_TIMEOUT_MS", &mut c.session_timeout_ms),
            ("GC_INTERVAL_MS", &mut c.gc_interval_ms),
            (
                "GC_SESSIONS_PER_ENTRY_MAX",
                &mut c.gc_sessions_per_entry_max,
            ),
            ("GC_BUSY_PERCENT_MAX", &mut c.gc_busy_percent_max),
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
            ("LOG_BYTES_MAX", &mut c.log_bytes_max),
            (
                "LOG_KEPT_BEHIND_SNAPSHOT_BYTES",
                &mut c.log_kept_behind_snapshot_bytes,
            ),
        ];
        for (name, slot) in vars {
            env_override(&format!("ONCEKV_{name}"), slot)?;
        }
        let sizes: [(&str, &mut usize); 8] = [
            ("REQUEST_BYTES_MAX", &mut c.request_bytes_max),
            ("LINE_BUFFERS_BYTES_MAX", &mut c.line_buffers_bytes_max),
            ("REPLY_BUFFERS_BYTES_MAX", &mut c.reply_buffers_bytes_max),
            ("PEER_LINE_BYTES_MAX", &mut c.peer_line_bytes_max),
            ("BATCH_BYTES_MAX", &mut c.batch_bytes_max),
            (
                "REJECTED_LOG_EXCERPT_BYTES",
                &mut c.rejected_log_excerpt_bytes,
            ),
            ("REQUESTS_IN_FLIGHT_MAX", &mut c.requests_in_flight_max),
            (
                "REQUESTS_IN_FLIGHT_BYTES_MAX",
                &mut c.requests_in_flight_bytes_max,
            ),
        ];
        for (name, slot) in sizes {
            env_override(&format!("ONCEKV_{name}"), slot)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Applies the rejected-input log settings to the process ([`crate::reject_log`]).
    pub fn configure_reject_log(&self) {
        crate::reject_log::configure(
            self.rejected_log_per_s,
            self.rejected_log_burst,
            self.rejected_log_excerpt_bytes,
        );
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
        // The fast path must be faster than the slow one: two ranks of waiting
        // (three voters) stay within the first election timeout.
        if self.leader_gone_stagger_ms.saturating_mul(2) >= self.election_timeout_min_ms {
            return fail("leader_gone_stagger_ms must be below half of election_timeout_min_ms");
        }
        if self.request_timeout_ms == 0 {
            return fail("timeouts must be positive");
        }
        if self.gc_interval_ms == 0 || self.session_timeout_ms == 0 {
            return fail("gc_interval_ms and session_timeout_ms must be positive");
        }
        // 0 would never expire anything; past the cap one entry could stall
        // writes for a second or more.
        if !(1..=GC_SESSIONS_PER_ENTRY_LIMIT).contains(&self.gc_sessions_per_entry_max) {
            return fail("gc_sessions_per_entry_max must be between 1 and 1,000,000");
        }
        // 0 would never expire anything.
        if !(1..=100).contains(&self.gc_busy_percent_max) {
            return fail("gc_busy_percent_max must be between 1 and 100");
        }
        if self.limits.sessions_max == 0 || self.limits.replies_per_session_max == 0 {
            return fail("sessions_max and replies_per_session_max must be positive");
        }
        // Without a tombstone, a retry from a session just removed would open a
        // fresh session and run again (rule 2 of docs/sessions.md).
        if self.limits.tombstones_max == 0 {
            return fail(
                "tombstones_max must be positive: a removed session's retries must be refused",
            );
        }
        // 0 would snapshot after every applied entry, forever.
        if self.snapshot_every_entries == 0 {
            return fail("snapshot_every_entries must be positive");
        }
        // Every duration is a small multiple away from openraft's arithmetic
        // (it multiplies the election timeout), so each is bounded, far above use.
        let durations = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("election_timeout_min_ms", self.election_timeout_min_ms),
            ("election_timeout_max_ms", self.election_timeout_max_ms),
            ("leader_gone_stagger_ms", self.leader_gone_stagger_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("gc_interval_ms", self.gc_interval_ms),
            ("append_timeout_ms", self.append_timeout_ms),
            ("snapshot_transfer_idle_ms", self.snapshot_transfer_idle_ms),
        ];
        if let Some((name, ms)) = durations.iter().find(|(_, ms)| *ms > DURATION_MS_MAX) {
            return Err(ConfigError(format!(
                "{name} ({ms}) must be at most {DURATION_MS_MAX} ms (one hour)"
            )));
        }
        if self.session_timeout_ms > SESSION_TIMEOUT_MS_MAX {
            return Err(ConfigError(format!(
                "session_timeout_ms ({}) must be at most {SESSION_TIMEOUT_MS_MAX} ms (a year)",
                self.session_timeout_ms
            )));
        }
        if self.outbox_capacity == 0 || self.requests_in_flight_max == 0 {
            return fail("queue capacities must be positive");
        }
        self.validate_sizes()?;
        // One entry always fits a batch: the largest a request makes.
        if (self.append_batch_bytes_max as usize) < self.entry_bytes_max() + ENTRY_WRAP_BYTES {
            return fail(
                "append_batch_bytes_max must be at least the largest entry \
                 (request_bytes_max + ENTRY_SLACK_BYTES + ENTRY_WRAP_BYTES)",
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
        if self.log_bytes_max < self.snapshot_every_bytes {
            return fail("log_bytes_max must be at least snapshot_every_bytes");
        }
        Ok(())
    }

    /// The relations between the size limits and the log record.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        let record = LOG_RECORD_BYTES_MAX;
        let fail = |s: String| Err(ConfigError(s));
        if self.request_bytes_max < REQUEST_BYTES_MIN {
            return fail(format!(
                "request_bytes_max ({}) must be at least {REQUEST_BYTES_MIN}",
                self.request_bytes_max
            ));
        }
        // The largest entry the node proposes: one request's op (a batch holds
        // one entry per request), refused at parse time past this size.
        let entry = self.entry_bytes_max() + ENTRY_WRAP_BYTES;
        if entry > record {
            return fail(format!(
                "request_bytes_max ({}) is too large: its log entry (up to {entry} bytes) \
                 must fit a log record ({record} bytes); at most {}",
                self.request_bytes_max,
                record - ENTRY_WRAP_BYTES - ENTRY_SLACK_BYTES
            ));
        }
        // An append carries at most `append_batch_bytes_max` of entries (or one
        // entry), a snapshot chunk `snapshot_chunk_bytes`; a forward one request.
        let needed =
            (self.peer_rpc_bytes_max() as usize).max(self.entry_bytes_max() + FORWARD_WRAP_BYTES);
        if self.peer_line_bytes_max < needed {
            return fail(format!(
                "peer_line_bytes_max ({}) must be at least {needed}: an append batch \
                 (append_batch_bytes_max), a snapshot chunk (snapshot_chunk_bytes), a \
                 forwarded request",
                self.peer_line_bytes_max
            ));
        }
        if self.batch_bytes_max < self.request_bytes_max {
            return fail(format!(
                "batch_bytes_max ({}) must be at least request_bytes_max ({})",
                self.batch_bytes_max, self.request_bytes_max
            ));
        }
        if self.requests_in_flight_max > tokio::sync::Semaphore::MAX_PERMITS {
            return fail("requests_in_flight_max is beyond what a semaphore can count".into());
        }
        // One full batch (or one largest request) must fit the byte bound by
        // itself; the driver never asks for more than the whole bound anyway.
        let batch_charge = self.batch_bytes_max + BATCH_MAX * IN_FLIGHT_OVERHEAD_BYTES;
        if self.requests_in_flight_bytes_max < batch_charge {
            return fail(format!(
                "requests_in_flight_bytes_max ({}) must hold one full batch: at least \
                 batch_bytes_max + {BATCH_MAX} x {IN_FLIGHT_OVERHEAD_BYTES} ({batch_charge})",
                self.requests_in_flight_bytes_max
            ));
        }
        // Any one request must be receivable while nothing else is.
        if self.line_buffers_bytes_max < self.request_bytes_max {
            return fail(format!(
                "line_buffers_bytes_max ({}) must be at least request_bytes_max ({})",
                self.line_buffers_bytes_max, self.request_bytes_max
            ));
        }
        // A read of the largest value must be answerable while nothing else is.
        if self.reply_buffers_bytes_max < self.request_bytes_max {
            return fail(format!(
                "reply_buffers_bytes_max ({}) must be at least request_bytes_max ({})",
                self.reply_buffers_bytes_max, self.request_bytes_max
            ));
        }
        if self.rejected_log_burst == 0 || self.rejected_log_excerpt_bytes < 16 {
            return fail(
                "rejected_log_burst must be positive, rejected_log_excerpt_bytes >= 16".into(),
            );
        }
        Ok(())
    }

    /// The largest encoded command (`ts_ms` and op) the node proposes for one
    /// request: [`Config::request_bytes_max`] plus [`ENTRY_SLACK_BYTES`].
    pub fn entry_bytes_max(&self) -> usize {
        self.request_bytes_max + ENTRY_SLACK_BYTES
    }

    /// The text of error 12 for a request line over [`Config::request_bytes_max`].
    pub fn request_too_long_text(&self, bytes: usize) -> String {
        format!(
            "request of {bytes} bytes exceeds the limit of {} bytes (request_bytes_max); \
             nothing was done. The limit is raised with ONCEKV_REQUEST_BYTES_MAX on every \
             node (at most {})",
            self.request_bytes_max,
            LOG_RECORD_BYTES_MAX - ENTRY_WRAP_BYTES - ENTRY_SLACK_BYTES
        )
    }

    /// The openraft configuration derived from this one, openraft building a
    /// snapshot every `snapshot_every_entries` entries.
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        self.raft_config_with(false)
    }

    /// The openraft configuration; with `amortized`, openraft never builds a
    /// snapshot by itself: the node's log budget asks for one, no more often
    /// than the log since the last one has grown as large as that snapshot
    /// (`Node::spawn_log_budget`).
    pub fn raft_config_with(&self, amortized: bool) -> Result<openraft::Config, ConfigError> {
        let snapshot_policy = if amortized {
            openraft::SnapshotPolicy::Never
        } else {
            openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries)
        };
        let c = openraft::Config {
            cluster_name: "oncekv".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // openraft hands this to `full_snapshot` as its TTL; the chunked
            // transfer gives each chunk `append_timeout_ms` instead, so it only
            // has to be the same bound.
            install_snapshot_timeout: self.append_timeout_ms,
            snapshot_policy,
            max_in_snapshot_log_to_keep: self.log_kept_behind_snapshot,
            // A node partitioned away and back must not disrupt a healthy leader.
            enable_pre_vote: Some(true),
            // A restarted leader holds an election (a new term) like any node.
            // openraft's default lets it lead on in its old term; but a leader
            // replicates entries before its own sync, so a kill can leave its
            // followers with entries its disk lost, and the restored leader would
            // then write different entries under the same (term, index): replicas
            // diverge (found by the simulator, docs/testing.md).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        c.validate().map_err(|e| ConfigError(e.to_string()))
    }

    /// The longest peer RPC line this config makes a node send (an append batch or
    /// one entry, whichever is larger; a snapshot chunk, whose JSON text at most
    /// doubles when escaped into a string), plus the envelope. A peer's line
    /// limit must be at least this.
    pub fn peer_rpc_bytes_max(&self) -> u64 {
        let entry = (self.entry_bytes_max() + ENTRY_WRAP_BYTES) as u64;
        let batch = self.append_batch_bytes_max.max(entry);
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

    /// A restarted leader must be elected again; the behaviour this pins is checked
    /// by the simulator's regression seeds (`tools::sim::tests`).
    #[test]
    fn a_restarted_leader_is_elected_again_not_restored() {
        let c = Config::default().raft_config().unwrap();
        assert_eq!(c.enable_leader_restore, Some(false));
    }

    #[test]
    fn settings_that_would_overflow_or_spin_are_refused() {
        let d = Config::default;
        let bad = |c: Config| assert!(c.validate().is_err(), "{c:?}");
        bad(Config {
            election_timeout_max_ms: u64::MAX,
            ..d()
        });
        bad(Config {
            heartbeat_interval_ms: 1 << 63,
            election_timeout_min_ms: (1 << 63) + 1,
            election_timeout_max_ms: (1 << 63) + 2,
            ..d()
        });
        bad(Config {
            session_timeout_ms: u64::MAX,
            ..d()
        });
        bad(Config {
            snapshot_every_entries: 0,
            ..d()
        });
        let mut c = d();
        c.limits.tombstones_max = 0;
        bad(c);
        let c = Config {
            election_timeout_min_ms: DURATION_MS_MAX - 1,
            election_timeout_max_ms: DURATION_MS_MAX,
            ..d()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn defaults_validate_and_bad_relations_do_not() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert!(Config::default().raft_config().is_ok());
        let c = Config {
            election_timeout_max_ms: 100,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        // The dead-leader fast path: off, or quicker than an election timeout.
        let stagger = |ms| Config {
            leader_gone_stagger_ms: ms,
            ..Config::default()
        };
        assert_eq!(stagger(0).validate(), Ok(()));
        // The byte bound on requests in flight holds at least one full batch.
        let bytes = |n| Config {
            requests_in_flight_bytes_max: n,
            ..Config::default()
        };
        let batch = Config::default().batch_bytes_max + BATCH_MAX * IN_FLIGHT_OVERHEAD_BYTES;
        assert_eq!(bytes(batch).validate(), Ok(()));
        assert!(bytes(batch - 1).validate().is_err());
        let gc = |n| Config {
            gc_sessions_per_entry_max: n,
            ..Config::default()
        };
        assert!(gc(0).validate().is_err());
        assert_eq!(gc(1).validate(), Ok(()));
        assert_eq!(gc(GC_SESSIONS_PER_ENTRY_LIMIT).validate(), Ok(()));
        assert!(gc(GC_SESSIONS_PER_ENTRY_LIMIT + 1).validate().is_err());
        let busy = |p| Config {
            gc_busy_percent_max: p,
            ..Config::default()
        };
        assert!(busy(0).validate().is_err());
        assert_eq!(busy(1).validate(), Ok(()));
        assert_eq!(busy(100).validate(), Ok(()));
        assert!(busy(101).validate().is_err());
        assert!(busy(u64::MAX).validate().is_err());
        assert_eq!(stagger(74).validate(), Ok(()));
        assert!(stagger(75).validate().is_err());
        assert!(stagger(u64::MAX).validate().is_err());
    }

    #[test]
    fn byte_bounds_relate_to_the_largest_entry_and_each_other() {
        let bad = |c: Config| assert!(c.validate().is_err(), "{c:?}");
        let d = Config::default;
        bad(Config {
            append_batch_bytes_max: (d().entry_bytes_max() + ENTRY_WRAP_BYTES) as u64 - 1,
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
        bad(Config {
            log_bytes_max: d().snapshot_every_bytes - 1,
            ..d()
        });
        // A peer's line limit must hold the largest RPC: 2 MiB + 64 KiB by default.
        assert_eq!(d().peer_rpc_bytes_max(), (2 << 20) + (64 << 10));
    }

    #[test]
    fn size_limits_must_fit_a_log_record_and_each_other() {
        let record = LOG_RECORD_BYTES_MAX;
        let largest = record - ENTRY_WRAP_BYTES - ENTRY_SLACK_BYTES;
        let with = |request_bytes_max: usize, peer_line_bytes_max, batch_bytes_max| Config {
            request_bytes_max,
            peer_line_bytes_max,
            batch_bytes_max,
            // One entry always fits an append batch.
            append_batch_bytes_max: ((request_bytes_max + ENTRY_SLACK_BYTES + ENTRY_WRAP_BYTES)
                as u64)
                .max(2 << 20),
            ..Config::default()
        };
        assert_eq!(with(largest, 2 << 30, largest).validate(), Ok(()));
        let e = with(largest + 1, 2 << 30, 8 << 20).validate().unwrap_err();
        assert!(e.0.contains("must fit a log record"), "{e}");
        assert!(with(100, 320 << 20, 4 << 20).validate().is_err());
        let e = with(1 << 20, 2 << 20, 4 << 20).validate().unwrap_err();
        assert!(e.0.contains("peer_line_bytes_max"), "{e}");
        assert_eq!(with(64 << 10, 32 << 20, 4 << 20).validate(), Ok(()));
        let e = with(1 << 20, 320 << 20, 1 << 19).validate().unwrap_err();
        assert!(e.0.contains("batch_bytes_max"), "{e}");
        let text = Config::default().request_too_long_text(5_000_000);
        assert!(
            text.contains("ONCEKV_REQUEST_BYTES_MAX") && text.contains("1048576"),
            "{text}"
        );
    }
}

//! The byte bound on client requests in flight, and how it follows the rate
//! at which the node gets through them; and the fixed bound on large replies
//! built and not yet written ([`Node::hold_reply`]), to clients and to peers
//! that forwarded a read.
//!
//! A fixed bound in bytes is the wrong bound for time. 32 MiB of requests is a
//! few milliseconds of work for small writes and more than a second for writes
//! of a megabyte on a 30 MB/s disk: past the request timeout every request in
//! flight is answered "not committed in time" although each is moving, its
//! client retries, and goodput falls to nothing. So the bound in force (the
//! *limit*) is what the node drains in [`Config::request_timeout_ms`] / 2,
//! measured, between a floor (one full batch, so a batch always fits) and
//! [`Config::requests_in_flight_bytes_max`]:
//!
//! ```text
//!   every ADAPT_WINDOW, in `take`:   aim = drained bytes/s x timeout/2
//!     someone waited for bytes       -> limit = mean(limit, aim)
//!     nobody waited, in flight > aim -> limit = mean(min(limit, in flight), aim)
//!     nobody waited, in flight <= aim -> limit = limit x 2      (probe upwards)
//!     then clamp to [floor, requests_in_flight_bytes_max]
//! ```
//!
//! By Little's law the bytes in flight are the drain rate times the time a
//! request spends in flight, so a limit of rate x timeout/2 keeps that time
//! near half the timeout: requests past it wait in their connection (back
//! pressure, before anything is proposed), not in the log. The rate measured
//! is what was done, which is less than what could be done when little was
//! asked; but then little is in flight, below the aim, and the limit only
//! grows.
//!
//! Written here rather than taken from a crate: it is a counter (taking free
//! bytes never yields, see [`ByteBudget`]) whose bound moves, and the time it
//! reads is tokio's, which the simulator controls.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Node;
use crate::config::{BATCH_MAX, Config, IN_FLIGHT_OVERHEAD_BYTES, REPLY_BYTES_UNCHARGED};
use crate::protocol::encode::body_bytes;
use crate::protocol::{ErrorCode, Reply};

/// How often the limit is reconsidered.
pub const ADAPT_WINDOW: Duration = Duration::from_millis(100);

/// Bytes of requests in flight, against a bound: a counter rather than a
/// semaphore, so taking bytes that are free never waits or yields (a semaphore
/// acquire spends the task's cooperative budget), and whoever runs within the
/// bound runs exactly as without it.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    /// The bound in force (see the module doc); `max` if it does not adapt.
    limit: AtomicUsize,
    max: usize,
    floor: usize,
    /// The time a request should spend in flight; `None`: the limit stays `max`.
    target: Option<Duration>,
    /// Bytes given back since the start.
    drained: AtomicU64,
    /// A taker had to wait since the window began.
    contended: AtomicBool,
    /// When the window began, and `drained` then.
    window: Mutex<(Instant, u64)>,
    /// Takers waiting for bytes to be freed.
    waiting: AtomicUsize,
    freed: Notify,
}

/// Bytes taken from a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct BytesHeld {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl ByteBudget {
    /// A fixed budget of `max` bytes.
    pub fn new(max: usize) -> Arc<ByteBudget> {
        Self::build(max, max, None)
    }

    /// A node's budget: at most [`Config::requests_in_flight_bytes_max`], at
    /// least one full batch, aiming at half the request timeout in flight.
    pub fn for_node(c: &Config) -> Arc<ByteBudget> {
        let floor = c.batch_bytes_max + BATCH_MAX * IN_FLIGHT_OVERHEAD_BYTES;
        Self::build(
            c.requests_in_flight_bytes_max,
            floor,
            Some(c.request_timeout() / 2),
        )
    }

    /// A budget between `floor` and `max` aiming at `target` in flight.
    pub fn build(max: usize, floor: usize, target: Option<Duration>) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(max),
            max,
            floor: floor.min(max),
            target,
            drained: AtomicU64::new(0),
            contended: AtomicBool::new(false),
            window: Mutex::new((Instant::now(), 0)),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// The bound in force now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    fn try_take(self: &Arc<Self>, bytes: usize) -> Option<BytesHeld> {
        let limit = self.limit();
        let mut now = self.used.load(Ordering::SeqCst);
        loop {
            // Alone, a request runs whatever the limit (it is at most `max`).
            if now > 0 && now + bytes > limit {
                return None;
            }
            match (self.used).compare_exchange(now, now + bytes, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Some(BytesHeld {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(seen) => now = seen,
            }
        }
    }

    /// Takes `bytes` (at most the whole budget) if that stays within the bound
    /// now; never waits.
    pub fn take_now(self: &Arc<Self>, bytes: usize) -> Option<BytesHeld> {
        self.adapt();
        self.try_take(bytes.min(self.max))
    }

    /// Takes `bytes` (at most the whole budget, so any request can run once the
    /// others are done), waiting while that would pass the bound.
    pub async fn take(self: &Arc<Self>, bytes: usize) -> BytesHeld {
        let bytes = bytes.min(self.max);
        self.adapt();
        if let Some(held) = self.try_take(bytes) {
            return held;
        }
        self.contended.store(true, Ordering::SeqCst);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Counted before the second look: a giver that frees bytes after it
            // sees this waiter and wakes it.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let got = self.try_take(bytes);
            if got.is_none() {
                freed.await;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(held) = got {
                return held;
            }
            self.adapt();
        }
    }

    /// Reconsiders the limit once per [`ADAPT_WINDOW`] (see the module doc).
    fn adapt(&self) {
        let Some(target) = self.target else {
            return;
        };
        // Whoever holds the window is already at it.
        let Ok(mut window) = self.window.try_lock() else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(window.0);
        if elapsed < ADAPT_WINDOW {
            return;
        }
        let drained = self.drained.load(Ordering::SeqCst);
        let old = self.limit();
        let used = self.used();
        let rate = drained.saturating_sub(window.1) as f64 / elapsed.as_secs_f64();
        let aim = (rate * target.as_secs_f64()).min(self.max as f64) as usize;
        let waited = self.contended.swap(false, Ordering::SeqCst)
            | (self.waiting.load(Ordering::SeqCst) > 0);
        let new = if waited {
            // The bound is what holds requests back: move it halfway to the aim.
            old / 2 + aim / 2
        } else if used > aim {
            // Everyone got in, but more is in flight than drains in the target.
            old.min(used) / 2 + aim / 2
        } else {
            old.saturating_mul(2)
        };
        let new = new.clamp(self.floor, self.max);
        self.limit.store(new, Ordering::SeqCst);
        *window = (now, drained);
        if new > old && self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }
}

impl BytesHeld {
    /// Holds `other`'s bytes too (given back together, with one wake-up).
    pub fn merge(&mut self, mut other: BytesHeld) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        (self.budget.drained).fetch_add(self.bytes as u64, Ordering::SeqCst);
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            self.budget.freed.notify_waiters();
        }
    }
}

/// An unsequenced reply's body, with its bytes among the replies not yet
/// written ([`Node::hold_reply`]) if it carries a large reply: a forwarded
/// read's, answered to a peer.
pub struct RawReply {
    /// The body.
    pub body: crate::raft::network::Body,
    /// Given back once its line is written.
    pub held: Option<BytesHeld>,
}

impl From<crate::raft::network::Body> for RawReply {
    fn from(body: crate::raft::network::Body) -> RawReply {
        RawReply { body, held: None }
    }
}

impl Node {
    /// `reply` with its place among the node's replies not yet written if it
    /// is large ([`REPLY_BYTES_UNCHARGED`]; given back when the holder is
    /// dropped, once the reply is written), or, if there is no room for it,
    /// error 11 in its place. Only a `read_ok` can be large, and a read changes
    /// nothing, so that error is definite.
    pub fn hold_reply(&self, reply: Reply) -> (Reply, Option<BytesHeld>) {
        let bytes = body_bytes(&reply);
        if bytes <= REPLY_BYTES_UNCHARGED {
            return (reply, None);
        }
        match self.replies.take_now(bytes) {
            Some(held) => (reply, Some(held)),
            None if !matches!(reply, Reply::ReadOk { .. }) => (reply, None),
            None => {
                let text = format!(
                    "no room for a reply of about {bytes} bytes: the node's buffers for \
                     replies not yet written are full (reply_buffers_bytes_max {} bytes, \
                     ONCEKV_REPLY_BUFFERS_BYTES_MAX); the read changed nothing; retry",
                    self.replies.limit()
                );
                crate::reject!("{text}");
                (Reply::error(ErrorCode::TemporarilyUnavailable, text), None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte bound: bytes that are free are taken at once; past the bound a
    /// taker waits until enough is given back; a charge above the whole bound is
    /// cut to it, so it runs once the others are done rather than never.
    #[tokio::test]
    async fn the_byte_bound_waits_past_its_size_and_never_for_ever() {
        let budget = ByteBudget::new(1000);
        let a = budget.take(600).await;
        let b = budget.take(400).await;
        assert_eq!(budget.used(), 1000);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(500).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "took bytes past the bound");
        drop(b); // 400 free: not enough for 500
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken once enough was given back")
            .expect("task");
        assert_eq!(budget.used(), 500);
        drop(c);
        assert_eq!(budget.used(), 0);
        let huge = budget.take(usize::MAX).await;
        assert_eq!(budget.used(), 1000, "cut to the whole bound");
        drop(huge);
        assert_eq!(budget.used(), 0);
    }

    /// Many takers against a small bound: never more than the bound in use, and
    /// every one gets its turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_byte_bound_holds_under_contention() {
        let budget = ByteBudget::new(100);
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (budget, peak) = (budget.clone(), peak.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let held = budget.take(10 + i % 30).await;
                        peak.fetch_max(budget.used(), Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        drop(held);
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("no taker starves")
                .expect("task");
        }
        assert!(peak.load(Ordering::SeqCst) <= 100);
        assert_eq!(budget.used(), 0);
    }

    /// 100 clients in closed loops, each taking 100 bytes and holding them for
    /// its turn at a "disk" that finishes one at a time in 10 ms (10,000
    /// bytes/s), with a target of 200 ms in flight: the bytes in flight settle
    /// near 2,000 (rate x target) rather than the 10,000 asked or the 1,000,000
    /// allowed. On tokio's paused clock, so the figures are exact whatever the
    /// machine.
    #[tokio::test(start_paused = true)]
    async fn the_limit_follows_the_drain_rate_and_recovers_when_idle() {
        let budget = ByteBudget::build(1_000_000, 300, Some(Duration::from_millis(200)));
        let disk = Arc::new(tokio::sync::Mutex::new(()));
        let end = Instant::now() + Duration::from_secs(5);
        let clients: Vec<_> = (0..100)
            .map(|_| {
                let (budget, disk) = (budget.clone(), disk.clone());
                tokio::spawn(async move {
                    while Instant::now() < end {
                        let held = budget.take(100).await;
                        let turn = disk.lock().await;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        drop(turn);
                        drop(held);
                    }
                })
            })
            .collect();
        let (mut low, mut high) = (usize::MAX, 0);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if end.duration_since(Instant::now()) < Duration::from_secs(3) {
                low = low.min(budget.used());
                high = high.max(budget.used());
            }
        }
        for c in clients {
            c.await.unwrap();
        }
        assert!(
            1_000 <= low && high <= 4_000,
            "in flight once adapted: {low}..{high} bytes, for 2,000 aimed at"
        );
        // Idle: every window without a wait doubles it back towards the max.
        for _ in 0..20 {
            tokio::time::sleep(ADAPT_WINDOW).await;
            drop(budget.take(1).await);
        }
        assert_eq!(budget.limit(), 1_000_000);
        // Nothing drains while a taker waits: the limit falls to the floor, no
        // lower, and a taker alone still runs.
        let stuck = ByteBudget::build(1_000, 300, Some(Duration::from_millis(200)));
        let held = stuck.take(900).await;
        let blocked = tokio::spawn({
            let stuck = stuck.clone();
            async move { stuck.take(200).await }
        });
        for _ in 0..10 {
            tokio::time::sleep(ADAPT_WINDOW).await;
            stuck.adapt();
        }
        assert_eq!(stuck.limit(), 300);
        drop(held);
        drop(blocked.await.unwrap());
        assert_eq!(stuck.used(), 0);
    }
}

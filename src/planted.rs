//! Planted bugs, compiled only into test builds and off unless a test turns one
//! on: each is a classic mistake of replicated state machines, placed where it
//! would really be made, so the simulator's tests can show that the search finds
//! it (`tools::sim`). Nothing here exists in a release or debug build of the
//! binary: the module and every call site are `#[cfg(test)]`.
//!
//! A bug is switched on for the current thread only (a simulation runs a whole
//! cluster on one thread), so tests running side by side do not see each other's.

use std::cell::Cell;

/// The planted bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Duplicates are only caught by the leader's look at the session cache
    /// before proposing; apply runs every entry it is given.
    DedupAtLeader,
    /// Snapshots leave out the session table.
    SessionsNotInSnapshot,
    /// Every replica expires idle sessions by its own clock instead of by the
    /// leader's GC entry.
    GcByLocalClock,
    /// The log store acknowledges an append before it is synced.
    AckBeforeSync,
    /// A leader answers reads from its local state without the read index.
    ReadWithoutReadIndex,
    /// The vote is not reloaded on restart.
    VoteForgotten,
    /// A simple client's next seq is computed as `last + 1`, which wraps.
    SeqWraps,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 7] = [
        Bug::DedupAtLeader,
        Bug::SessionsNotInSnapshot,
        Bug::GcByLocalClock,
        Bug::AckBeforeSync,
        Bug::ReadWithoutReadIndex,
        Bug::VoteForgotten,
        Bug::SeqWraps,
    ];
}

thread_local! {
    static ACTIVE: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Turns `bug` on for this thread (or every bug off with `None`).
pub fn plant(bug: Option<Bug>) {
    ACTIVE.with(|a| a.set(bug));
}

/// Whether `bug` is on for this thread.
pub fn active(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get() == Some(bug))
}

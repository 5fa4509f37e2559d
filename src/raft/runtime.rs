//! The async runtime openraft runs on: tokio, with one difference. openraft draws
//! its election timeouts from [`AsyncRuntime::thread_rng`]; here that draw comes
//! from a per-thread generator that the deterministic simulator ([`crate::sim`])
//! seeds, so that one seed gives one run. Outside a simulation the generator is
//! seeded from the operating system's entropy, exactly as tokio's runtime does.
//!
//! Written here rather than taken from `openraft_rt::DeterministicRng`: that
//! wrapper keeps its seed in a task-local, which panics in tasks spawned with
//! `tokio::spawn` (the node spawns its own), and it cannot be left unseeded in
//! production.
//!
//! The same thread-local also tells [`blocking`] whether this thread runs a
//! simulation: there, blocking work runs inline, because a thread pool's timing
//! would make the run depend on the machine.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::async_runtime::{AsyncRuntime, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand10::SeedableRng;
use rand10::rngs::SmallRng;

thread_local! {
    /// The simulator's seed for this thread's draws, advanced on every draw.
    static SIM_SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes this thread's draws deterministic from `seed` (a simulation), or
/// entropy-seeded again with `None`.
pub fn seed_this_thread(seed: Option<u64>) {
    SIM_SEED.with(|s| s.set(seed));
}

/// Whether this thread runs a deterministic simulation.
pub fn simulated() -> bool {
    SIM_SEED.with(|s| s.get().is_some())
}

/// The next generator for this thread: from the simulation's seed sequence, or
/// from entropy.
fn next_rng() -> SmallRng {
    match SIM_SEED.with(|s| s.get().inspect(|seed| s.set(Some(splitmix64(*seed))))) {
        Some(seed) => SmallRng::seed_from_u64(seed),
        None => SmallRng::from_rng(&mut rand10::rng()),
    }
}

/// SplitMix64: advances a seed to the next, well mixed.
pub fn splitmix64(seed: u64) -> u64 {
    let z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `f`, which blocks (encodes or writes a large snapshot), off the async
/// threads; inline in a simulation.
pub async fn blocking<F, T>(f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if simulated() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

/// tokio, with [`AsyncRuntime::thread_rng`] as above.
#[derive(Debug)]
pub struct OnceRuntime(TokioRuntime);

impl AsyncRuntime for OnceRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;
    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        next_rng()
    }

    fn new(threads: usize) -> Self {
        OnceRuntime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        blocking(f)
    }
}

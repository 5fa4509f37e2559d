//! Seeds: one run seed, and independent random streams derived from it by name, so
//! adding a consumer of randomness does not shift the others.
//!
//! It may not hold any other state of a run.

use rand::SeedableRng;
use rand::rngs::StdRng;

/// A random stream for `purpose`, derived from the run's seed (FNV-1a of the name mixed
/// with the seed, then SplitMix64, so nearby seeds give unrelated streams).
pub fn derive_rng(seed: u64, purpose: &str) -> StdRng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in purpose.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// A seed for a run when none was given: the clock's nanoseconds.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The variable a randomized test reads its seed from.
pub const TEST_SEED_VAR: &str = "ONCEKV_TEST_SEED";

/// A randomized test's seed: [`TEST_SEED_VAR`] if set, else a fresh one; printed
/// with the command that repeats the run.
pub fn test_seed() -> u64 {
    let seed = std::env::var(TEST_SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fresh_seed);
    crate::stderr_line!("seed {seed} (rerun with {TEST_SEED_VAR}={seed})");
    seed
}

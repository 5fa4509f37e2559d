//! [`Samples`]: latencies of one measured run, and the figures reported from them.
//!
//! Pure figures: no I/O, no clock, no product type.

use std::time::Duration;

/// Latencies (microseconds) of the operations completed inside one measurement window.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// One entry per completed operation, unsorted until [`Samples::summary`].
    micros: Vec<u64>,
}

impl Samples {
    /// Records one operation's latency.
    pub fn push(&mut self, latency: Duration) {
        self.micros.push(latency.as_micros() as u64);
    }

    /// Adds another run's samples (e.g. another client's).
    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    /// Operations recorded.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// Throughput over `window` and the p50/p99 latencies.
    pub fn summary(mut self, window: Duration) -> Summary {
        self.micros.sort_unstable();
        Summary {
            ops: self.micros.len(),
            ops_per_s: self.micros.len() as f64 / window.as_secs_f64(),
            p50_us: quantile(&self.micros, 0.50),
            p99_us: quantile(&self.micros, 0.99),
        }
    }
}

/// What one run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Operations completed in the window.
    pub ops: usize,
    /// `ops` divided by the window.
    pub ops_per_s: f64,
    /// Median latency, microseconds (0 if no operation completed).
    pub p50_us: u64,
    /// 99th-percentile latency, microseconds (0 if no operation completed).
    pub p99_us: u64,
}

/// The `q`-quantile (0..=1) of ascending `sorted` by the nearest-rank method: the
/// smallest sample with at least `q` of all samples at or below it. 0 if empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "not sorted");
    debug_assert!((0.0..=1.0).contains(&q), "quantile {q} outside 0..=1");
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize; // 1-based
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the lower middle for an even count); `None` if empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// Throughput ratios `ours[i] / theirs[i]`, one per round (the two runs of a round
/// are back to back, so machine-wide slowdowns mostly cancel), then sorted: their
/// spread says how far the ratio of the means can be trusted. Rounds missing on
/// either side, or with no throughput on theirs, are skipped.
pub fn round_ratios(ours: &[Summary], theirs: &[Summary]) -> Vec<f64> {
    let mut r: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter(|(_, t)| t.ops_per_s > 0.0)
        .map(|(o, t)| o.ops_per_s / t.ops_per_s)
        .collect();
    r.sort_by(f64::total_cmp);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tput(ops_per_s: f64) -> Summary {
        Summary {
            ops: ops_per_s as usize,
            ops_per_s,
            p50_us: 1,
            p99_us: 2,
        }
    }

    #[test]
    fn round_ratios_pair_rounds_in_order_and_sort() {
        let ours = [tput(2_000.0), tput(2_200.0), tput(1_800.0)];
        let theirs = [tput(1_000.0), tput(1_000.0), tput(1_000.0)];
        assert_eq!(round_ratios(&ours, &theirs), vec![1.8, 2.0, 2.2]);
        // A missing round or a zero throughput on their side is left out.
        assert_eq!(round_ratios(&ours, &theirs[..1]), vec![2.0]);
        assert_eq!(round_ratios(&ours[..1], &[tput(0.0)]), Vec::<f64>::new());
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.50), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
        // Few samples: p99 is the maximum, not an interpolation below it.
        assert_eq!(quantile(&[1, 2, 3, 1000], 0.99), 1000);
    }

    #[test]
    fn summary_counts_the_window() {
        let mut s = Samples::default();
        for us in [300u64, 100, 200, 400] {
            s.push(Duration::from_micros(us));
        }
        let sum = s.summary(Duration::from_secs(2));
        assert_eq!(sum.ops, 4);
        assert_eq!(sum.ops_per_s, 2.0);
        assert_eq!(sum.p50_us, 200);
        assert_eq!(sum.p99_us, 400);
    }

    #[test]
    fn median_of_durations() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), Some(ms(2)));
        assert_eq!(median(&[ms(4), ms(1), ms(2), ms(3)]), Some(ms(2)));
        assert_eq!(median(&[]), None);
    }
}

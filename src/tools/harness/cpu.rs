//! The harness's own CPU use, from `/proc/self/stat` (utime + stime), so a run can show
//! that the harness was not the bottleneck.
//!
//! It may not touch the run: it only reads this process's counters.

use std::time::Instant;

/// Clock ticks per second for `/proc` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds this process has used so far, if `/proc` is readable.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Measures CPU over wall time from its creation.
pub struct CpuMeter {
    wall: Instant,
    cpu: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start() -> Self {
        CpuMeter {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// CPU seconds used per wall second since the start (1.0 = one core busy).
    pub fn share(&self) -> Option<f64> {
        let used = cpu_seconds()? - self.cpu?;
        let wall = self.wall.elapsed().as_secs_f64();
        (wall > 0.0).then(|| used / wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_cpu() {
        let m = CpuMeter::start();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let share = m.share().expect("/proc is readable on Linux");
        // The spin kept one thread busy; other test threads may add to it.
        assert!(share > 0.3, "{share}");
    }
}

//! Issues operations at the configured rate (Jepsen's `gen/stagger` over all clients):
//! each op is scheduled a gap uniform in [0, 2/rate) after the previous one; if no
//! worker is free when it comes due, it goes out as soon as one is, and the next gap
//! counts from then. A free worker is picked at random; each worker has at most one
//! op outstanding.
//!
//! It decides when, never what: the operations are the workload's.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::worker::Worker;
use super::workload::{Generator, OpSpec};
use crate::tools::history::OpType;

/// When to issue.
pub struct Pace {
    /// Ops per second across all workers (0: none).
    pub rate: f64,
    /// Stop issuing at this instant.
    pub end: Instant,
    /// Picks gaps and workers.
    pub rng: StdRng,
}

/// Runs `workers` under `generator` until `pace.end`, then waits for the outstanding ops
/// to finish (each is bounded by its worker's timeout and retry policy). Returns the
/// number of ops issued.
pub async fn run(generator: &mut dyn Generator, workers: Vec<Worker>, mut pace: Pace) -> u64 {
    let n = workers.len();
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, OpType)>(n.max(1));
    let mut inboxes = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for (i, mut w) in workers.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<OpSpec>(1);
        inboxes.push(tx);
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(spec) = rx.recv().await {
                let outcome = w.perform(&spec).await;
                if done.send((i, outcome)).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(done_tx);
    let mut free: BTreeSet<usize> = (0..n).collect();
    let mut issued = 0u64;
    let mut next = Instant::now();
    let mean_gap = if pace.rate > 0.0 {
        1.0 / pace.rate
    } else {
        0.0
    };
    let mut blocked = false;
    loop {
        while let Ok((w, outcome)) = done_rx.try_recv() {
            generator.complete(w, outcome);
            free.insert(w);
        }
        let now = Instant::now();
        if now >= pace.end {
            break;
        }
        let wake = if pace.rate <= 0.0 {
            pace.end
        } else {
            next.min(pace.end)
        };
        if wake > now || free.is_empty() {
            blocked |= free.is_empty() && next <= now;
            let until = if free.is_empty() { pace.end } else { wake };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                got = done_rx.recv() => if let Some((w, outcome)) = got {
                    generator.complete(w, outcome);
                    free.insert(w);
                },
            }
            continue;
        }
        let pick = pace.rng.gen_range(0..free.len());
        let Some(&w) = free.iter().nth(pick) else {
            continue;
        };
        free.remove(&w);
        let spec = generator.next_op(w);
        if inboxes[w].send(spec).await.is_err() {
            break;
        }
        issued += 1;
        let base = if blocked { now } else { next };
        blocked = false;
        next = base + Duration::from_secs_f64(pace.rng.gen_range(0.0..2.0 * mean_gap));
    }
    while free.len() < n {
        match done_rx.recv().await {
            Some((w, outcome)) => {
                generator.complete(w, outcome);
                free.insert(w);
            }
            None => break,
        }
    }
    drop(inboxes);
    for t in tasks {
        let _ = t.await;
    }
    issued
}

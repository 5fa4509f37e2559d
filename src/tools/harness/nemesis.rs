//! Fault schedules, after Jepsen's `nemesis/combined.clj` (v0.3.7, the version
//! Maelstrom 0.2.4 uses) and the grudge functions of `nemesis.clj`.
//!
//! - Each fault alternates start/stop (`gen/flip-flop`), staggered (`gen/stagger`): gaps
//!   uniform in [0, 2 * interval). The first start comes at once, as the run begins:
//!   Jepsen's `Stagger` schedules its first op at `(or next-time now)`.
//! - A partition start picks uniformly among `one`, `minority-third`, `majority`,
//!   `majorities-ring` and turns it into a grudge: receiver -> senders it drops.
//! - Beyond Maelstrom, `kill` alternates SIGKILL of one random node and its restart
//!   (fresh process, fresh `init`), as Jepsen's db package does.
//!
//! The whole schedule is computed up front from the seed, so a seed fixes it exactly.
//!
//! It may not touch processes or queues itself: the runner applies the schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use super::net::Grudge;
use super::seed::derive_rng;

/// A kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Maelstrom's network partitions.
    Partition,
    /// Beyond Maelstrom: SIGKILL a node, then restart it.
    Kill,
    /// Beyond Maelstrom: one-way partitions ([`Shape::ONE_WAY`]). With `Partition`
    /// too, a start picks from both sets of shapes (one flip-flop, one grudge).
    PartitionOneWay,
}

/// Which faults and how often.
#[derive(Debug, Clone, Default)]
pub struct NemesisConfig {
    /// Faults to inject; empty means none.
    pub faults: BTreeSet<Fault>,
    /// Mean seconds between nemesis operations of each fault.
    pub interval: Duration,
}

/// Jepsen's partition specs (`partition-specs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One random node cut off both ways.
    One,
    /// floor((n-1)/3) nodes cut off (a no-op at n = 3).
    MinorityThird,
    /// Shuffled, floor(n/2) nodes vs the rest.
    Majority,
    /// Each node hears a different majority; a one-way ring at n = 3.
    MajoritiesRing,
    /// Beyond Maelstrom: one random node hears nobody; everyone hears it.
    DeafOne,
    /// Beyond Maelstrom: nobody hears one random node; it hears everyone.
    MuteOne,
    /// Beyond Maelstrom: a shuffled minority (floor(n/2) nodes) does not hear the
    /// rest, which still hears it.
    OneWayMajority,
}

impl Shape {
    /// All shapes, in Jepsen's order.
    pub const ALL: [Shape; 4] = [
        Shape::One,
        Shape::MinorityThird,
        Shape::Majority,
        Shape::MajoritiesRing,
    ];

    /// The one-way shapes (`--nemesis partition-one-way`).
    pub const ONE_WAY: [Shape; 3] = [Shape::DeafOne, Shape::MuteOne, Shape::OneWayMajority];

    /// Jepsen's name (ours for the one-way shapes).
    pub fn name(self) -> &'static str {
        match self {
            Shape::One => "one",
            Shape::MinorityThird => "minority-third",
            Shape::Majority => "majority",
            Shape::MajoritiesRing => "majorities-ring",
            Shape::DeafOne => "deaf-one",
            Shape::MuteOne => "mute-one",
            Shape::OneWayMajority => "one-way-majority",
        }
    }
}

/// A nemesis action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Install this grudge.
    StartPartition(Shape, Grudge),
    /// Heal every partition.
    StopPartition,
    /// SIGKILL this node.
    Kill(String),
    /// Restart this (killed) node and send it `init`.
    Start(String),
}

impl Action {
    /// The history `f`.
    pub fn f(&self) -> &'static str {
        match self {
            Action::StartPartition(..) => "start-partition",
            Action::StopPartition => "stop-partition",
            Action::Kill(_) => "kill",
            Action::Start(_) => "start",
        }
    }

    /// The history `value`: a grudge as node -> [nodes it does not hear], or the node.
    pub fn value(&self) -> Value {
        match self {
            Action::StartPartition(_, g) => grudge_json(g),
            Action::StopPartition => Value::Null,
            Action::Kill(n) | Action::Start(n) => Value::from(n.as_str()),
        }
    }
}

/// A grudge as JSON: `{"n0": ["n1", "n2"], ...}`.
pub fn grudge_json(g: &Grudge) -> Value {
    Value::Object(
        g.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::from(v.iter().cloned().collect::<Vec<_>>()),
                )
            })
            .collect(),
    )
}

/// One scheduled action, `at` after the run starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub action: Action,
}

/// `complete-grudge`: no node hears anyone outside its component.
pub fn complete_grudge(components: &[Vec<String>]) -> Grudge {
    let universe: BTreeSet<String> = components.iter().flatten().cloned().collect();
    let mut g = Grudge::new();
    for c in components {
        let mine: BTreeSet<String> = c.iter().cloned().collect();
        for n in c {
            g.insert(n.clone(), universe.difference(&mine).cloned().collect());
        }
    }
    g
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// `majorities-ring-perfect` (n <= 5): shuffle into a ring; each window of `majority(n)`
/// consecutive nodes is what its middle node hears.
fn majorities_ring_perfect(nodes: &[String], rng: &mut StdRng) -> Grudge {
    let n = nodes.len();
    let m = majority(n);
    let mut ring = nodes.to_vec();
    ring.shuffle(rng);
    let universe: BTreeSet<String> = nodes.iter().cloned().collect();
    (0..n)
        .map(|i| {
            let window: Vec<String> = (0..m).map(|j| ring[(i + j) % n].clone()).collect();
            let centre = window[m / 2].clone();
            let heard: BTreeSet<String> = window.into_iter().collect();
            (centre, universe.difference(&heard).cloned().collect())
        })
        .collect()
}

/// `majorities-ring-stochastic` (n > 5): repeatedly link a least-connected node to another
/// least-connected node it is not yet linked to, until everyone hears a majority.
fn majorities_ring_stochastic(nodes: &[String], rng: &mut StdRng) -> Grudge {
    let m = majority(nodes.len());
    let mut conns: BTreeMap<String, BTreeSet<String>> = nodes
        .iter()
        .map(|n| (n.clone(), [n.clone()].into()))
        .collect();
    // Bounded: each round adds one link, and there are at most n^2 links.
    for _ in 0..nodes.len() * nodes.len() {
        let mut by_degree: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (n, c) in &conns {
            by_degree.entry(c.len()).or_default().push(n.clone());
        }
        let mut order: Vec<(usize, String)> = Vec::new();
        for (d, mut ns) in by_degree {
            ns.shuffle(rng);
            order.extend(ns.into_iter().map(|n| (d, n)));
        }
        let (a_degree, a) = order[0].clone();
        if a_degree >= m {
            break;
        }
        let Some((_, b)) = order.iter().find(|(_, b)| !conns[&a].contains(b)).cloned() else {
            break;
        };
        conns.entry(a.clone()).or_default().insert(b.clone());
        conns.entry(b).or_default().insert(a);
    }
    let universe: BTreeSet<String> = nodes.iter().cloned().collect();
    conns
        .into_iter()
        .map(|(n, c)| (n, universe.difference(&c).cloned().collect()))
        .collect()
}

/// The grudge for a partition shape (`combined.clj` `grudge`).
pub fn grudge(shape: Shape, nodes: &[String], rng: &mut StdRng) -> Grudge {
    let n = nodes.len();
    let mut shuffled = nodes.to_vec();
    match shape {
        Shape::One => {
            let loner = nodes[rng.gen_range(0..n)].clone();
            let rest: Vec<String> = nodes.iter().filter(|x| **x != loner).cloned().collect();
            complete_grudge(&[vec![loner], rest])
        }
        Shape::Majority => {
            shuffled.shuffle(rng);
            let rest = shuffled.split_off(n / 2);
            complete_grudge(&[shuffled, rest])
        }
        Shape::MinorityThird => {
            shuffled.shuffle(rng);
            let rest = shuffled.split_off((n.saturating_sub(1)) / 3);
            complete_grudge(&[shuffled, rest])
        }
        Shape::MajoritiesRing if n <= 5 => majorities_ring_perfect(nodes, rng),
        Shape::MajoritiesRing => majorities_ring_stochastic(nodes, rng),
        Shape::DeafOne | Shape::MuteOne => {
            let node = nodes[rng.gen_range(0..n)].clone();
            let others: BTreeSet<String> = nodes.iter().filter(|x| **x != node).cloned().collect();
            if shape == Shape::DeafOne {
                Grudge::from([(node, others)])
            } else {
                others
                    .into_iter()
                    .map(|o| (o, BTreeSet::from([node.clone()])))
                    .collect()
            }
        }
        Shape::OneWayMajority => {
            shuffled.shuffle(rng);
            let rest = shuffled.split_off(n / 2);
            let rest: BTreeSet<String> = rest.into_iter().collect();
            shuffled.into_iter().map(|d| (d, rest.clone())).collect()
        }
    }
}

/// Every nemesis event before `time_limit`, in time order, from `seed`.
pub fn schedule(
    cfg: &NemesisConfig,
    nodes: &[String],
    time_limit: Duration,
    seed: u64,
) -> Vec<Event> {
    let mut events = Vec::new();
    let gap_max = 2 * cfg.interval.as_nanos() as u64;
    let mut shapes: Vec<Shape> = Vec::new();
    if cfg.faults.contains(&Fault::Partition) {
        shapes.extend(Shape::ALL);
    }
    if cfg.faults.contains(&Fault::PartitionOneWay) {
        shapes.extend(Shape::ONE_WAY);
    }
    for fault in &cfg.faults {
        // Both partition faults share one flip-flop (one grudge at a time).
        if *fault == Fault::PartitionOneWay && cfg.faults.contains(&Fault::Partition) {
            continue;
        }
        let mut rng = derive_rng(seed, &format!("nemesis-{fault:?}"));
        // Jepsen's Stagger: the first op at once, each later one a gap after the last.
        let mut at = Duration::ZERO;
        let mut started = false;
        let mut victim = String::new();
        while at < time_limit {
            let action = match (fault, started) {
                (Fault::Partition | Fault::PartitionOneWay, false) => {
                    let shape = shapes[rng.gen_range(0..shapes.len())];
                    Action::StartPartition(shape, grudge(shape, nodes, &mut rng))
                }
                (Fault::Partition | Fault::PartitionOneWay, true) => Action::StopPartition,
                (Fault::Kill, false) => {
                    victim = nodes[rng.gen_range(0..nodes.len())].clone();
                    Action::Kill(victim.clone())
                }
                (Fault::Kill, true) => Action::Start(victim.clone()),
            };
            events.push(Event { at, action });
            started = !started;
            at += Duration::from_nanos(rng.gen_range(0..gap_max.max(1)));
        }
    }
    events.sort_by_key(|e| e.at);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    /// Senders each node hears (itself included), from a grudge over `nodes`.
    fn hears(g: &Grudge, nodes: &[String]) -> BTreeMap<String, BTreeSet<String>> {
        nodes
            .iter()
            .map(|n| {
                let cut = g.get(n).cloned().unwrap_or_default();
                (
                    n.clone(),
                    nodes
                        .iter()
                        .filter(|s| !cut.contains(*s))
                        .cloned()
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn one_way_shapes_cut_one_direction_only() {
        let ns = nodes(5);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            for shape in Shape::ONE_WAY {
                let g = grudge(shape, &ns, &mut rng);
                let h = hears(&g, &ns);
                // Some link is cut, and every cut is one-way: if a does not hear
                // b, then b hears a.
                let mut cut = 0;
                for a in &ns {
                    for b in &ns {
                        if !h[a].contains(b) {
                            cut += 1;
                            assert!(h[b].contains(a), "{shape:?}: {a}<->{b} both cut: {g:?}");
                        }
                    }
                }
                assert!(cut > 0, "{shape:?} cut nothing");
                match shape {
                    Shape::DeafOne => {
                        let deaf: Vec<_> = ns.iter().filter(|n| h[*n].len() == 1).collect();
                        assert_eq!(deaf.len(), 1, "{g:?}");
                    }
                    Shape::MuteOne => assert_eq!(cut, 4, "{g:?}"),
                    Shape::OneWayMajority => assert_eq!(cut, 2 * 3, "{g:?}"),
                    _ => unreachable!(),
                }
            }
        }
    }

    #[test]
    fn partition_one_way_alone_or_with_partition_shares_one_flip_flop() {
        let ns = nodes(3);
        let cfg = |faults: &[Fault]| NemesisConfig {
            faults: faults.iter().copied().collect(),
            interval: Duration::from_secs(1),
        };
        let one_way = schedule(
            &cfg(&[Fault::PartitionOneWay]),
            &ns,
            Duration::from_secs(200),
            3,
        );
        let starts: Vec<Shape> = (one_way.iter())
            .filter_map(|e| match &e.action {
                Action::StartPartition(s, _) => Some(*s),
                _ => None,
            })
            .collect();
        assert!(starts.len() > 20);
        assert!(
            starts.iter().all(|s| Shape::ONE_WAY.contains(s)),
            "{starts:?}"
        );
        let both = schedule(
            &cfg(&[Fault::Partition, Fault::PartitionOneWay]),
            &ns,
            Duration::from_secs(200),
            3,
        );
        let fs: Vec<&str> = both.iter().map(|e| e.action.f()).collect();
        assert!(
            fs.windows(2).all(|w| w[0] != w[1]),
            "starts and stops alternate: {fs:?}"
        );
        let shapes: BTreeSet<&str> = (both.iter())
            .filter_map(|e| match &e.action {
                Action::StartPartition(s, _) => Some(s.name()),
                _ => None,
            })
            .collect();
        assert!(
            shapes.contains("deaf-one") || shapes.contains("mute-one"),
            "{shapes:?}"
        );
        assert!(
            shapes.contains("one") || shapes.contains("majority"),
            "{shapes:?}"
        );
    }

    #[test]
    fn one_cuts_a_single_node_off_both_ways() {
        for n in [3, 5] {
            let ns = nodes(n);
            let g = grudge(Shape::One, &ns, &mut StdRng::seed_from_u64(n as u64));
            let loners: Vec<_> = g.iter().filter(|(_, v)| v.len() == n - 1).collect();
            assert_eq!(loners.len(), 1, "{g:?}");
            let loner = loners[0].0.clone();
            for (k, v) in &g {
                if *k != loner {
                    assert_eq!(*v, set(&[loner.as_str()]));
                }
            }
        }
    }

    #[test]
    fn minority_third_is_a_no_op_at_three_and_cuts_one_at_five() {
        let g3 = grudge(
            Shape::MinorityThird,
            &nodes(3),
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(g3.len(), 3);
        assert!(g3.values().all(BTreeSet::is_empty), "{g3:?}");
        let g5 = grudge(
            Shape::MinorityThird,
            &nodes(5),
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(g5.values().filter(|v| v.len() == 4).count(), 1, "{g5:?}");
        assert_eq!(g5.values().filter(|v| v.len() == 1).count(), 4, "{g5:?}");
    }

    #[test]
    fn majority_splits_floor_half_from_the_rest() {
        for (n, small) in [(3, 1), (5, 2)] {
            let ns = nodes(n);
            let g = grudge(Shape::Majority, &ns, &mut StdRng::seed_from_u64(9));
            // Minority members drop the n - small majority members, and vice versa.
            assert_eq!(
                g.values().filter(|v| v.len() == n - small).count(),
                small,
                "{g:?}"
            );
            assert_eq!(
                g.values().filter(|v| v.len() == small).count(),
                n - small,
                "{g:?}"
            );
            // Symmetric: a drops b iff b drops a.
            for (a, cut) in &g {
                for b in cut {
                    assert!(g[b].contains(a));
                }
            }
        }
    }

    #[test]
    fn majorities_ring_at_three_is_a_one_way_ring() {
        let ns = nodes(3);
        for seed in 0..10 {
            let g = grudge(Shape::MajoritiesRing, &ns, &mut StdRng::seed_from_u64(seed));
            // Each node drops exactly one sender, and no two nodes drop each other.
            assert!(g.values().all(|v| v.len() == 1), "{g:?}");
            for (a, cut) in &g {
                let b = cut.iter().next().unwrap();
                assert!(!g[b].contains(a), "one-way: {g:?}");
            }
            // Every node still hears a majority (itself and one other), never the same one.
            let h = hears(&g, &ns);
            let distinct: BTreeSet<_> = h.values().cloned().collect();
            assert_eq!(distinct.len(), 3);
        }
    }

    #[test]
    fn majorities_ring_at_five_gives_each_node_a_distinct_majority_window() {
        let ns = nodes(5);
        let g = grudge(Shape::MajoritiesRing, &ns, &mut StdRng::seed_from_u64(4));
        let h = hears(&g, &ns);
        assert!(h.values().all(|s| s.len() == 3), "{h:?}");
        let distinct: BTreeSet<_> = h.values().cloned().collect();
        assert_eq!(distinct.len(), 5);
        // Ring structure: each node hears its two ring neighbours; links are symmetric.
        for (a, hs) in &h {
            for b in hs {
                assert!(h[b].contains(a), "{h:?}");
            }
        }
    }

    #[test]
    fn majorities_ring_above_five_gives_everyone_a_majority() {
        let ns = nodes(7);
        let g = grudge(Shape::MajoritiesRing, &ns, &mut StdRng::seed_from_u64(2));
        let h = hears(&g, &ns);
        assert!(h.values().all(|s| s.len() >= 4), "{h:?}");
        assert!(h.values().any(|s| s.len() < 7), "some links are cut: {h:?}");
    }

    #[test]
    fn schedule_is_fixed_by_the_seed_and_alternates() {
        let cfg = NemesisConfig {
            faults: [Fault::Partition, Fault::Kill].into(),
            interval: Duration::from_secs(10),
        };
        let ns = nodes(5);
        let a = schedule(&cfg, &ns, Duration::from_secs(300), 42);
        assert_eq!(a, schedule(&cfg, &ns, Duration::from_secs(300), 42));
        assert_ne!(a, schedule(&cfg, &ns, Duration::from_secs(300), 43));
        let parts: Vec<_> = a
            .iter()
            .filter(|e| e.action.f().ends_with("partition"))
            .collect();
        assert_eq!(
            parts[0].at,
            Duration::ZERO,
            "the first start comes at once, as Jepsen's Stagger lets it"
        );
        for (i, e) in parts.iter().enumerate() {
            assert_eq!(
                e.action.f(),
                if i % 2 == 0 {
                    "start-partition"
                } else {
                    "stop-partition"
                }
            );
        }
        // Gaps are uniform in [0, 2 * interval): mean about the interval.
        let gaps: Vec<f64> = parts
            .windows(2)
            .map(|w| (w[1].at - w[0].at).as_secs_f64())
            .collect();
        assert!(gaps.iter().all(|g| *g < 20.0));
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((5.0..15.0).contains(&mean), "{mean}");
        // Every kill is followed by the restart of the same node.
        let kills: Vec<_> = a
            .iter()
            .filter(|e| matches!(e.action, Action::Kill(_) | Action::Start(_)))
            .collect();
        for w in kills.chunks(2) {
            if let [
                Event {
                    action: Action::Kill(k),
                    ..
                },
                Event {
                    action: Action::Start(s),
                    ..
                },
            ] = w
            {
                assert_eq!(k, s);
            } else if w.len() == 2 {
                panic!("kill/start out of order: {w:?}");
            }
        }
        // Adding a fault leaves the partition schedule unchanged.
        let only = NemesisConfig {
            faults: [Fault::Partition].into(),
            ..cfg
        };
        let b = schedule(&only, &ns, Duration::from_secs(300), 42);
        assert_eq!(b, parts.into_iter().cloned().collect::<Vec<_>>());
    }
}

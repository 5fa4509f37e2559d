//! Hand-written histories for the linearizability checker: ones that must pass,
//! and known anomalies that must fail, naming the key.

mod check_common;

use std::time::Duration;

use check_common::H;
use oncekv::tools::check::{
    CheckOptions, LinReport, NullReads, Validity, check_counters, check_linearizable,
    try_check_linearizable,
};
use oncekv::tools::history::OpType;
use serde_json::{Value, json};

fn check_with(h: &H, null_reads: NullReads) -> LinReport {
    let opts = CheckOptions {
        time_limit: Duration::from_secs(10),
        null_reads,
    };
    let report = check_linearizable(&h.ops, &opts);
    eprintln!("{}", report.render());
    assert_eq!(report.null_reads, null_reads, "the mode is recorded");
    report
}

/// Checks with the default rules (null reads as Knossos).
fn check(h: &H) -> LinReport {
    check_with(h, NullReads::default())
}

fn assert_valid(h: &H) {
    let r = check(h);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    assert!(r.failures.is_empty());
}

/// Asserts the history fails on exactly `key`, and returns the failure's window.
fn assert_invalid_on(h: &H, key: i64) -> LinReport {
    assert_invalid_with(h, key, NullReads::default())
}

fn assert_invalid_with(h: &H, key: i64, null_reads: NullReads) -> LinReport {
    let r = check_with(h, null_reads);
    assert_eq!(r.valid, Validity::Invalid, "{r:#?}");
    assert_eq!(r.failures.len(), 1, "{r:#?}");
    assert_eq!(r.failures[0].key, json!(key));
    r
}

/// The error `try_check_linearizable` refuses `h` with (default options).
fn refusal(h: &H) -> String {
    let err = try_check_linearizable(&h.ops, &CheckOptions::default())
        .expect_err("a malformed history is refused");
    let r = check_linearizable(&h.ops, &CheckOptions::default());
    assert_eq!(r.valid, Validity::Unknown);
    assert_eq!(r.error, Some(err.to_string()));
    err.to_string()
}

#[test]
fn overlapping_ops_may_take_effect_in_any_order() {
    let mut h = H::default();
    h.inv(1, "write", 0, json!(1))
        .inv(2, "read", 0, Value::Null)
        .inv(3, "write", 0, json!(2));
    h.ok(2, json!(2)).ok_echo(1).ok_echo(3); // the read saw 2 before 1 landed
    h.read(2, 0, json!(1));
    assert_valid(&h);
}

#[test]
fn a_read_of_a_missing_key_sees_null() {
    let mut h = H::default();
    h.read(1, 0, Value::Null)
        .write(1, 0, json!(3))
        .read(2, 0, json!(3));
    assert_valid(&h);
}

#[test]
fn an_info_write_may_take_effect_later() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).inv(2, "write", 0, json!(3)).info(2);
    h.read(3, 0, json!(1))
        .read(3, 0, json!(3))
        .read(4, 0, json!(3));
    assert_valid(&h);
}

#[test]
fn an_info_write_may_never_take_effect() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).inv(2, "write", 0, json!(3)).info(2);
    h.read(3, 0, json!(1)).read(3, 0, json!(1));
    assert_valid(&h);
}

#[test]
fn an_unfinished_op_is_open_ended() {
    let mut h = H::default();
    h.inv(2, "write", 0, json!(3))
        .read(3, 0, Value::Null)
        .read(3, 0, json!(3));
    assert_valid(&h); // process 2 never completes: the run ended first
}

#[test]
fn cas_success_and_failure() {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .inv(1, "cas", 0, json!([1, 2]))
        .ok_echo(1);
    h.inv(2, "cas", 0, json!([1, 3])).fail(2); // dropped: definitely did not happen
    h.inv(3, "cas", 0, json!([2, 4])).info(3); // may have happened ...
    h.read(4, 0, json!(4)); // ... and did
    assert_valid(&h);
}

#[test]
fn reads_that_end_in_info_or_fail_constrain_nothing() {
    let mut h = H::default();
    h.write(1, 0, json!(1));
    h.inv(2, "read", 0, Value::Null).info(2);
    h.inv(5, "read", 0, Value::Null).fail(5);
    assert_valid(&h);
}

#[test]
fn adds_start_from_zero() {
    let mut h = H::default();
    h.add(1, 0, 2, 2).add(2, 0, 3, 5).read(1, 0, json!(5));
    assert_valid(&h);
}

#[test]
fn stale_read_is_caught_with_a_minimal_window() {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .read(2, 0, json!(1))
        .write(1, 0, json!(2));
    h.read(2, 0, json!(2)).read(3, 0, json!(1)); // stale
    h.write(1, 0, json!(3)).read(2, 0, json!(3));
    let r = assert_invalid_on(&h, 0);
    let f = &r.failures[0];
    assert!(f.minimal);
    assert!(!f.from_nil, "the window starts mid-history: {f:#?}");
    let seen: Vec<(OpType, Value)> = f.ops.iter().map(|o| (o.kind, o.value.clone())).collect();
    let ok_values: Vec<&Value> = seen
        .iter()
        .filter(|(k, _)| *k == OpType::Ok)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        ok_values,
        [&json!(2), &json!(1)],
        "read 2 then read 1: {seen:?}"
    );
}

#[test]
fn lost_write_is_caught_when_null_reads_are_strict() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, Value::Null);
    let r = assert_invalid_with(&h, 0, NullReads::Strict);
    assert!(r.failures[0].from_nil);
    assert_eq!(r.failures[0].ops.len(), 4, "the write and the read");
}

/// Knossos' cas-register: a read of nil is legal in any state. The default.
#[test]
fn a_null_read_is_legal_in_any_state_by_default() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, Value::Null);
    h.inv(1, "cas", 0, json!([1, 2])).ok_echo(1);
    h.read(2, 0, Value::Null).read(3, 0, json!(2));
    assert_valid(&h);
    assert_invalid_with(&h, 0, NullReads::Strict);
}

#[test]
fn a_null_read_hides_no_other_violation() {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .read(2, 0, Value::Null)
        .read(2, 0, json!(2)); // 2 was never written
    assert_invalid_on(&h, 0);
    assert_invalid_with(&h, 0, NullReads::Strict);
}

/// The search used to take an `add` of 0 first, untried alternatives and all,
/// as if it could not change the state; on a missing key it makes 0, so a
/// concurrent read of null (strict) or cas from null must be allowed first.
#[test]
fn an_add_of_zero_on_a_missing_key_may_follow_a_concurrent_null_read() {
    let mut h = H::default();
    h.inv(1, "add", 0, json!(0)).inv(2, "read", 0, Value::Null);
    h.ok(2, Value::Null).ok(1, json!(0));
    let r = check_with(&h, NullReads::Strict);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
}

#[test]
fn an_add_of_zero_on_a_missing_key_may_follow_a_concurrent_cas_from_null() {
    let mut h = H::default();
    h.inv(1, "add", 0, json!(0))
        .inv(2, "cas", 0, json!([null, 0]));
    h.ok_echo(2).ok(1, json!(0));
    assert_valid(&h);
    // Not concurrent, the add comes first and the cas from null cannot succeed.
    let mut h = H::default();
    h.add(1, 0, 0, 0)
        .inv(2, "cas", 0, json!([null, 0]))
        .ok_echo(2);
    assert_invalid_on(&h, 0);
}

#[test]
fn cas_against_the_wrong_value_is_caught() {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .inv(2, "cas", 0, json!([2, 3]))
        .ok_echo(2);
    assert_invalid_on(&h, 0);
}

#[test]
fn info_write_seen_then_unseen_is_caught() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).inv(2, "write", 0, json!(3)).info(2);
    h.read(3, 0, json!(3)).read(3, 0, json!(1));
    let r = assert_invalid_on(&h, 0);
    let f = &r.failures[0];
    let window: Vec<&str> = f.ops.iter().map(|o| o.f.as_str()).collect();
    assert_eq!(window, ["read"; 4], "the two reads: {f:#?}");
    let overlapping: Vec<OpType> = f.overlapping.iter().map(|o| o.kind).collect();
    assert_eq!(
        overlapping,
        [OpType::Invoke, OpType::Info],
        "the open-ended write"
    );
}

#[test]
fn double_applied_add_is_caught() {
    let mut h = H::default();
    h.add(1, 0, 2, 2).read(2, 0, json!(4));
    assert_invalid_on(&h, 0);
}

#[test]
fn an_integer_is_not_a_float() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, json!(1.0));
    assert_invalid_on(&h, 0);
}

#[test]
fn only_the_bad_key_is_named() {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .write(2, 1, json!(1))
        .read(1, 0, json!(1));
    h.write(3, 7, json!(2))
        .read(2, 1, json!(2))
        .read(3, 7, json!(2));
    let r = assert_invalid_on(&h, 1);
    assert_eq!(r.keys_checked, 3);
}

#[test]
fn nemesis_lines_are_ignored() {
    let mut h = H::default();
    h.write(1, 0, json!(1));
    let mut nemesis = h.ops[0].clone();
    nemesis.process = oncekv::tools::history::Process::Nemesis;
    nemesis.kind = OpType::Info;
    nemesis.f = "start-partition".into();
    nemesis.key = None;
    h.ops.insert(1, nemesis);
    h.read(2, 0, json!(1));
    assert_valid(&h);
}

#[test]
fn a_malformed_history_is_not_judged() {
    let mut h = H::default();
    h.inv(1, "write", 0, json!(1)).inv(1, "write", 0, json!(2));
    let err = refusal(&h);
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_completion_for_another_key_is_refused() {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .inv(2, "read", 0, Value::Null)
        .ok(2, json!(1));
    h.ops[3].key = Some(json!(1));
    let err = refusal(&h);
    assert!(
        err.contains("line 4: completion key 1 does not match 0"),
        "{err}"
    );
    assert!(err.contains("invoke at line 3"), "{err}");
    let counters = check_counters(&h.ops, &Default::default());
    assert_eq!(counters.error, Some(err.replace("bad history: ", "")));
}

#[test]
fn a_completion_with_another_f_is_refused() {
    let mut h = H::default();
    h.inv(1, "read", 0, Value::Null).ok(1, Value::Null);
    h.ops[1].f = "write".into();
    let err = refusal(&h);
    assert!(
        err.contains(r#"line 2: completion f "write" does not match "read""#),
        "{err}"
    );
}

#[test]
fn a_time_that_goes_backwards_is_refused() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, json!(1));
    h.ops[2].time = h.ops[1].time - 1; // the read's invoke, before the write's ok
    let err = refusal(&h);
    assert!(
        err.contains("line 3: time 1999999 is before time 2000000 of line 2"),
        "{err}"
    );
    let counters = check_counters(&h.ops, &Default::default());
    assert!(counters.error.is_some_and(|e| e.contains("line 3")));
    // A completion stamped before its own invoke goes backwards too.
    let mut h = H::default();
    h.write(1, 0, json!(1));
    h.ops[1].time = h.ops[0].time - 1;
    assert!(refusal(&h).contains("line 2"));
}

/// Real-time order comes from `time`: op A precedes op B only if A completed
/// strictly before B was invoked. Lines with equal times are concurrent, even
/// though one comes first in the file.
#[test]
fn ops_whose_times_are_equal_are_concurrent() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, json!(3));
    h.inv(3, "write", 0, json!(3)).ok_echo(3);
    // The write of 3 is invoked at the very ns the read of 3 completes.
    h.ops[4].time = h.ops[3].time;
    let r = check(&h);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    // One ns later, the read saw a value not yet written.
    h.ops[4].time += 1;
    assert_invalid_on(&h, 0);
}

/// The harness stamps every line under one lock, later than the line before:
/// times strictly increase, so real-time order from `time` is the line order,
/// and a history checks the same whatever the gaps between its times. Random
/// small histories (valid and invalid), each checked with its times and with times
/// replaced by line numbers: same verdict, same window.
#[test]
fn strictly_increasing_times_check_as_line_order() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let seed: u64 = std::env::var("ONCEKV_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (rerun with ONCEKV_CHECK_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let opts = CheckOptions {
        time_limit: Duration::from_secs(10),
        null_reads: NullReads::Strict,
    };
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..300 {
        let h = random_history(&mut rng);
        let mut by_line = h.ops.clone();
        for (i, op) in by_line.iter_mut().enumerate() {
            op.time = i as u64;
        }
        let mut by_time = h.ops.clone();
        let mut t = 0;
        for op in &mut by_time {
            t += rng.gen_range(1..5_000_000u64);
            op.time = t;
        }
        let a = check_linearizable(&by_line, &opts);
        let b = check_linearizable(&by_time, &opts);
        assert_eq!(a.valid, b.valid, "{:#?}", h.ops);
        let windows = |r: &LinReport| -> Vec<Vec<(OpType, Value)>> {
            let line = |o: &oncekv::tools::history::HistoryOp| (o.kind, o.value.clone());
            r.failures
                .iter()
                .map(|f| f.ops.iter().map(line).collect())
                .collect()
        };
        assert_eq!(windows(&a), windows(&b), "{:#?}", h.ops);
        match a.valid {
            Validity::Valid => valid += 1,
            _ => invalid += 1,
        }
    }
    eprintln!("{valid} valid, {invalid} invalid");
    assert!(valid > 0 && invalid > 0, "both verdicts are exercised");
}

/// Up to 10 ops by 3 processes on one key, values 0..3: a register that takes
/// each op's effect when it completes, except that a read sometimes returns a
/// random value (so about half the histories are invalid) and an `info` op takes
/// effect or not at random.
fn random_history(rng: &mut impl rand::Rng) -> H {
    let mut h = H::default();
    let mut open: [Option<(String, Value)>; 3] = Default::default();
    let mut next_process = [1u64, 2, 3];
    let mut reg = Value::Null;
    for _ in 0..20 {
        let w = rng.gen_range(0..3);
        let p = next_process[w];
        let Some((f, v)) = open[w].take() else {
            let (f, v) = match rng.gen_range(0..4) {
                0 => ("read", Value::Null),
                1 => ("write", json!(rng.gen_range(0..3))),
                2 => ("cas", json!([rng.gen_range(0..3), rng.gen_range(0..3)])),
                _ => ("add", json!(rng.gen_range(0..2))),
            };
            h.inv(p, f, 0, v.clone());
            open[w] = Some((f.to_string(), v));
            continue;
        };
        let takes_effect = rng.gen_bool(0.5);
        if rng.gen_bool(0.15) {
            if takes_effect {
                reg = apply(&f, &v, &reg).unwrap_or(reg);
            }
            h.info(p);
            next_process[w] += 3;
            continue;
        }
        match (f.as_str(), apply(&f, &v, &reg)) {
            ("read", _) if rng.gen_bool(0.1) => h.ok(p, json!(rng.gen_range(0..3))),
            ("read", _) => h.ok(p, reg.clone()),
            (_, None) => h.fail(p),
            ("add", Some(total)) => {
                reg = total.clone();
                h.ok(p, total)
            }
            (_, Some(next)) => {
                reg = next;
                h.ok_echo(p)
            }
        };
    }
    h
}

/// The register after `f` with `v`, or `None` if a cas does not apply.
fn apply(f: &str, v: &Value, reg: &Value) -> Option<Value> {
    match f {
        "read" => Some(reg.clone()),
        "write" => Some(v.clone()),
        "cas" => (*reg == v[0]).then(|| v[1].clone()),
        _ => Some(json!(reg.as_i64().unwrap_or(0) + v.as_i64().unwrap_or(0))),
    }
}

#[test]
fn an_exhausted_time_limit_gives_unknown() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, json!(1));
    let r = check_linearizable(
        &h.ops,
        &CheckOptions {
            time_limit: Duration::ZERO,
            ..CheckOptions::default()
        },
    );
    assert_eq!(r.valid, Validity::Unknown);
    assert_eq!(r.unknown_keys, [json!(0)]);
}

#[test]
fn the_report_serialises_as_results_json_expects() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, json!(2));
    let r = check(&h);
    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["valid"], json!(false));
    assert_eq!(v["keys_checked"], json!(1));
    assert_eq!(v["failures"][0]["key"], json!(0));
    assert_eq!(v["null_reads"], json!("any-state"));
    let back: LinReport = serde_json::from_value(v.clone()).expect("round-trips");
    assert_eq!(back, r);
    let strict = check_with(&h, NullReads::Strict);
    let v_strict = serde_json::to_value(&strict).expect("serialises");
    assert_eq!(v_strict["null_reads"], json!("strict"));
    // A report written before the field existed was made with strict null reads.
    let mut old = v;
    old.as_object_mut().expect("an object").remove("null_reads");
    let back: LinReport = serde_json::from_value(old).expect("reads");
    assert_eq!(back.null_reads, NullReads::Strict);
}

//! Hand-written histories for the linearizability checker: ones that must pass,
//! and known anomalies that must fail, naming the key.

mod check_common;

use std::time::Duration;

use check_common::H;
use oncekv::tools::check::{
    CheckOptions, LinReport, Validity, check_linearizable, try_check_linearizable,
};
use oncekv::tools::history::OpType;
use serde_json::{Value, json};

fn check(h: &H) -> LinReport {
    let opts = CheckOptions {
        time_limit: Duration::from_secs(10),
    };
    let report = check_linearizable(&h.ops, &opts);
    eprintln!("{}", report.render());
    report
}

fn assert_valid(h: &H) {
    let r = check(h);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    assert!(r.failures.is_empty());
}

/// Asserts the history fails on exactly `key`, and returns the failure's window.
fn assert_invalid_on(h: &H, key: i64) -> LinReport {
    let r = check(h);
    assert_eq!(r.valid, Validity::Invalid, "{r:#?}");
    assert_eq!(r.failures.len(), 1, "{r:#?}");
    assert_eq!(r.failures[0].key, json!(key));
    r
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
fn lost_write_is_caught() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, Value::Null);
    let r = assert_invalid_on(&h, 0);
    assert!(r.failures[0].from_nil);
    assert_eq!(r.failures[0].ops.len(), 4, "the write and the read");
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
    let opts = CheckOptions::default();
    let err = try_check_linearizable(&h.ops, &opts).expect_err("double invoke");
    assert!(err.to_string().contains("entry 2"), "{err}");
    let r = check_linearizable(&h.ops, &opts);
    assert_eq!(r.valid, Validity::Unknown);
    assert!(r.error.is_some());
}

#[test]
fn an_exhausted_time_limit_gives_unknown() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, json!(1));
    let r = check_linearizable(
        &h.ops,
        &CheckOptions {
            time_limit: Duration::ZERO,
        },
    );
    assert_eq!(r.valid, Validity::Unknown);
    assert_eq!(r.unknown_keys, [json!(0)]);
}

#[test]
fn the_report_serialises_as_results_json_expects() {
    let mut h = H::default();
    h.write(1, 0, json!(1)).read(2, 0, Value::Null);
    let r = check(&h);
    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["valid"], json!(false));
    assert_eq!(v["keys_checked"], json!(1));
    assert_eq!(v["failures"][0]["key"], json!(0));
    let back: LinReport = serde_json::from_value(v).expect("round-trips");
    assert_eq!(back, r);
}

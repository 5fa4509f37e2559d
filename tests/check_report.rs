//! The report: results.json's shape and figures, the summary, the SVG plots,
//! the timeline and the HTML pages.

mod check_common;

use std::time::Duration;

use check_common::H;
use check_common::sim::{SimConfig, simulate};
use oncekv::tools::check::{CheckOptions, Validity, check_counters, check_linearizable};
use oncekv::tools::history::{HistoryOp, OpType, Process};
use oncekv::tools::report::harness::{HarnessFacts, NetFaults, ProtocolViolations, Violation};
use oncekv::tools::report::html::{RunEntry, run_page, store_page};
use oncekv::tools::report::timeline::timeline_html;
use oncekv::tools::report::{
    NetCounts, NetInputs, Results, TestParams, build_results, fault_windows, latency_svg,
    nemesis_count, summary, throughput_svg,
};
use serde_json::{Value, json};

fn results_for(h: &H) -> Results {
    let lin = check_linearizable(
        &h.ops,
        &CheckOptions {
            time_limit: Duration::from_secs(5),
            ..CheckOptions::default()
        },
    );
    let net = NetInputs {
        all: NetCounts { send: 40, recv: 38 },
        clients: NetCounts { send: 8, recv: 8 },
        servers: NetCounts { send: 32, recv: 30 },
    };
    build_results("lin-kv", &h.ops, lin, net, 2)
}

/// Four reads with latencies 1, 2, 3, 4 ms, one failed cas, one info write, one
/// ok write and one cas that never completed.
fn mixed() -> H {
    let mut h = H::default();
    h.write(9, 0, json!(1)); // 1 ms
    for p in 1..=4 {
        h.inv(p, "read", 0, Value::Null);
    }
    for p in 1..=4 {
        h.ok(p, json!(1)); // each completes 4 lines (4 ms) after its invoke
    }
    h.inv(5, "cas", 0, json!([3, 4])).fail(5);
    h.inv(6, "write", 0, json!(2)).info(6);
    h.inv(7, "cas", 0, json!([2, 3]));
    h
}

#[test]
fn counts_availability_and_latency() {
    let r = results_for(&mixed());
    assert_eq!(
        (r.stats.count, r.stats.ok, r.stats.fail, r.stats.info),
        (8, 5, 1, 2)
    );
    assert_eq!(r.stats.by_f["read"].ok, 4);
    assert_eq!(r.stats.by_f["cas"].fail, 1);
    assert_eq!(
        r.stats.by_f["cas"].info, 1,
        "an unfinished op counts as info"
    );
    assert_eq!(r.availability.ok_fraction, 5.0 / 8.0);
    // Reads invoked at 3,4,5,6 ms and completed at 7,8,9,10 ms: 4 ms each.
    let read = r.latency_ms["read"];
    assert_eq!(
        (read.p50, read.p95, read.p99, read.max),
        (4.0, 4.0, 4.0, 4.0)
    );
    assert_eq!(r.latency_ms["write"].max, 1.0);
    assert!(
        !r.latency_ms.contains_key("cas"),
        "no ok cas, so no cas latency"
    );
    assert_eq!(r.net.all.msgs_per_op, 5.0);
    assert_eq!(r.net.servers.msgs_per_op, 4.0);
}

#[test]
fn an_f_without_any_ok_makes_the_run_invalid() {
    let r = results_for(&mixed());
    assert_eq!(r.linearizable.valid, Validity::Valid);
    assert!(!r.stats.valid, "cas never succeeded");
    assert_eq!(r.valid, Validity::Invalid);
    assert!(summary(&r).contains("no ok op for cas"), "{}", summary(&r));
}

#[test]
fn a_clean_run_is_valid_and_says_so() {
    let r = results_for(&clean());
    assert!(r.stats.valid);
    assert_eq!(r.valid, Validity::Valid);
    let text = summary(&r);
    eprintln!("{text}");
    assert!(text.contains("Everything looks good!"), "{text}");
    assert!(text.contains("2 partitions"), "{text}");
}

#[test]
fn results_json_has_the_shape_docs_history_gives() {
    let r = results_for(&mixed());
    let v = serde_json::to_value(&r).expect("serialises");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "availability",
        "latency_ms",
        "linearizable",
        "nemesis",
        "net",
        "stats",
        "valid",
        "workload",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(v["valid"], json!(false));
    assert_eq!(v["linearizable"]["valid"], json!(true));
    assert_eq!(
        v["stats"]["by_f"]["read"],
        json!({"count": 4, "ok": 4, "fail": 0, "info": 0})
    );
    assert_eq!(
        v["net"]["clients"],
        json!({"send": 8, "recv": 8, "msg_count": 8, "msgs_per_op": 1.0})
    );
    assert_eq!(v["nemesis"], json!({"partitions": 2}));
    assert!(v["latency_ms"]["read"]["p99"].is_number());
    let back: Results = serde_json::from_value(v).expect("round-trips");
    assert_eq!(back, r);
}

#[test]
fn the_counter_check_joins_the_verdict() {
    let mut h = H::default();
    h.add(1, 5, 2, 2).add(2, 5, 3, 5);
    let finals = [("5".to_string(), json!(7))].into_iter().collect();
    let counters = check_counters(&h.ops, &finals);
    let r = results_for(&h).with_exactly_once(counters);
    assert_eq!(r.valid, Validity::Invalid, "7 is more than 2 + 3");
    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["exactly_once"]["keys"][0]["verdict"], json!("duplicate"));
    assert!(summary(&r).contains("Duplicate"));
}

fn facts(violations: u64) -> HarnessFacts {
    let kept = (0..violations)
        .map(|i| Violation {
            node: "n1".into(),
            reason: "not JSON".into(),
            line: format!("garbage {i}"),
        })
        .collect();
    HarnessFacts {
        seed: 42,
        node_count: 3,
        concurrency: 12,
        time_limit_s: 10.0,
        cpu_share: Some(0.05),
        ops_per_s: 29.5,
        protocol_violations: ProtocolViolations {
            count: violations,
            strict: true,
            read_on: false,
            first: kept,
        },
        availability: None,
        malformed_replies: (0, Vec::new()),
        kills: 0,
        net_faults: NetFaults {
            dropped_partition: 7,
            ..NetFaults::default()
        },
        beyond_maelstrom: vec!["message loss p=0.05".into()],
    }
}

fn clean() -> H {
    let mut h = H::default();
    h.write(1, 0, json!(1))
        .read(2, 0, json!(1))
        .inv(3, "cas", 0, json!([1, 2]))
        .ok_echo(3);
    h
}

#[test]
fn the_harness_object_is_kept_apart_from_the_spec_keys() {
    let r = results_for(&clean()).with_harness(facts(0));
    assert_eq!(r.valid, Validity::Valid);
    let v = serde_json::to_value(&r).expect("serialises");
    assert_eq!(v["harness"]["seed"], json!(42));
    assert_eq!(v["harness"]["protocol_violations"]["count"], json!(0));
    assert_eq!(v["harness"]["net_faults"]["dropped_partition"], json!(7));
    assert_eq!(v["net"]["servers"]["msg_count"], json!(32));
    let text = summary(&r);
    assert!(text.contains("seed 42"), "{text}");
    assert!(text.contains("BEYOND MAELSTROM: message loss"), "{text}");
    assert!(text.contains("harness cpu: 5% of one core"), "{text}");
    let back: Results = serde_json::from_value(v).expect("round-trips");
    assert_eq!(back, r);
}

#[test]
fn a_protocol_violation_makes_a_linearizable_run_invalid() {
    let r = results_for(&clean()).with_harness(facts(2));
    assert_eq!(r.linearizable.valid, Validity::Valid);
    assert_eq!(r.valid, Validity::Invalid);
    let text = summary(&r);
    assert!(text.contains("PROTOCOL VIOLATIONS: 2"), "{text}");
    assert!(text.contains("garbage 1"), "{text}");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn the_svg_has_a_dot_per_completed_op_and_shaded_partitions() {
    let h = mixed();
    let partitions = vec![(2_000_000, Some(4_000_000), "n0 <-/-> n1 & n2".to_string())];
    let svg = latency_svg(&h.ops, &partitions);
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    // 7 completed ops, all at distinct points, plus 3 legend circles; 4 reads
    // share a latency but not an invoke time.
    assert_eq!(count(&svg, "<circle"), 7 + 3, "{svg}");
    assert!(
        svg.contains("n0 &lt;-/-&gt; n1 &amp; n2"),
        "escaped description"
    );
    assert!(svg.contains("latency (ms, log scale)"));
    assert_eq!(count(&svg, "<g "), count(&svg, "</g>"));
}

#[test]
fn the_svg_of_an_empty_history_is_still_a_plot() {
    let svg = latency_svg(&[], &[(0, None, "majority".to_string())]);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(count(&svg, "<circle"), 3, "the legend only");
    assert!(svg.contains("Latency of 0 completed ops"));
}

#[test]
fn the_svg_of_a_large_history_stays_small() {
    let seed = 7;
    eprintln!("seed {seed}");
    let cfg = SimConfig {
        seed,
        ops: 60_000,
        keys: 20,
        counter_keys: 2,
        groups: 4,
        group_size: 10,
        info_probability: 0.01,
    };
    let run = simulate(&cfg);
    let svg = latency_svg(&run.history, &[]);
    let dots = count(&svg, "<circle") - 3;
    eprintln!("{} bytes, {dots} dots", svg.len());
    assert!(dots <= oncekv::tools::report::svg::MAX_DOTS);
    assert!(svg.len() < 4_000_000, "{} bytes", svg.len());
    assert!(svg.trim_end().ends_with("</svg>"));
}

fn nemesis(f: &str, value: Value, time_ms: u64) -> HistoryOp {
    HistoryOp {
        process: Process::Nemesis,
        kind: OpType::Info,
        f: f.into(),
        key: None,
        value,
        time: time_ms * 1_000_000,
        error: None,
        client_id: None,
        seq: None,
    }
}

/// `mixed()` (ops at 1..=19 ms) with a partition that cuts nothing from 2 to 5 ms
/// and one that cuts n0 off from 6 to 9 ms, in time order.
fn with_partitions() -> Vec<HistoryOp> {
    let mut ops = mixed().ops;
    ops.push(nemesis(
        "start-partition",
        json!({"n0": [], "n1": [], "n2": []}),
        2,
    ));
    ops.push(nemesis("stop-partition", Value::Null, 5));
    ops.push(nemesis(
        "start-partition",
        json!({"n0": ["n1", "n2"], "n1": ["n0"], "n2": ["n0"]}),
        6,
    ));
    ops.push(nemesis("stop-partition", Value::Null, 9));
    ops.sort_by_key(|o| o.time);
    ops
}

/// The `data-start-ns` of every shaded nemesis band in an SVG.
fn shaded_starts(svg: &str) -> Vec<u64> {
    svg.split("<rect class=\"nemesis\" data-start-ns=\"")
        .skip(1)
        .map(|rest| {
            rest[..rest.find('"').expect("closing quote")]
                .parse()
                .expect("ns")
        })
        .collect()
}

#[test]
fn the_summary_table_has_a_header_row_then_a_row_per_f() {
    let text = summary(&results_for(&mixed()));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.split_whitespace().next() == Some("f"))
        .unwrap_or_else(|| panic!("no header row: {text}"));
    let words: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(
        words,
        [
            "f", "count", "ok", "fail", "info", "p50", "ms", "p95", "ms", "p99", "ms", "max", "ms"
        ]
    );
    let rows: Vec<&str> = lines[header + 1..=header + 3]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(rows, ["cas", "read", "write"], "{text}");
    assert!(
        lines[header + 1].trim_end().ends_with('-'),
        "cas has no ok op: {text}"
    );
}

#[test]
fn a_partition_that_cuts_nothing_is_neither_shaded_nor_counted() {
    let ops = with_partitions();
    let windows = fault_windows(&ops);
    assert_eq!(
        windows.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
        vec![(6_000_000, Some(9_000_000))]
    );
    assert_eq!(nemesis_count(&ops, "start-partition"), 1);
    // The latency plot shades it in each of its 3 panels, the throughput plot once.
    for (svg, panels) in [
        (latency_svg(&ops, &windows), 3),
        (throughput_svg(&ops, &windows), 1),
    ] {
        assert_eq!(shaded_starts(&svg), vec![6_000_000; panels], "{svg}");
    }
}

#[test]
fn the_latency_plot_has_a_panel_per_f_and_the_shaded_windows_in_each() {
    let ops = with_partitions();
    let windows = fault_windows(&ops);
    let svg = latency_svg(&ops, &windows);
    for f in ["cas", "read", "write"] {
        assert!(
            svg.contains(&format!(
                "<g class=\"dots\" data-f=\"{f}\" data-outcome=\"ok\""
            )),
            "no {f} panel: {svg}"
        );
    }
    // The window is shaded once in each of the three panels.
    assert_eq!(shaded_starts(&svg).len(), 3, "{svg}");
    assert_eq!(count(&svg, "class=\"panel\""), 3);
}

#[test]
fn the_throughput_plot_has_a_series_per_f_and_outcome() {
    let ops = with_partitions();
    let svg = throughput_svg(&ops, &fault_windows(&ops));
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for (f, outcome) in [
        ("read", "ok"),
        ("write", "ok"),
        ("write", "fail or info"),
        ("cas", "fail or info"),
    ] {
        assert!(
            svg.contains(&format!("data-f=\"{f}\" data-outcome=\"{outcome}\"")),
            "no {f} {outcome} line: {svg}"
        );
    }
    assert!(
        !svg.contains("data-f=\"cas\" data-outcome=\"ok\""),
        "cas never succeeded, so it has no ok line"
    );
    assert!(svg.contains("ops/s"));
}

#[test]
fn the_timeline_has_a_column_per_process_and_a_box_per_op() {
    let ops = with_partitions();
    let html = timeline_html(&ops, &fault_windows(&ops));
    // Processes 1..=7 and 9 invoked; one header each.
    assert_eq!(count(&html, "class=\"hdr\""), 8, "{html}");
    assert_eq!(count(&html, "class=\"op ok\""), 5);
    assert_eq!(count(&html, "class=\"op fail\""), 1);
    assert_eq!(count(&html, "class=\"op info\""), 1);
    assert_eq!(
        count(&html, "class=\"op info open\""),
        1,
        "the cas that never completed"
    );
    assert_eq!(count(&html, "class=\"band\""), 1, "one shaded partition");
    assert!(
        html.contains("title=\"process 5\ninvoke cas 0 [3,4]"),
        "{html}"
    );
}

fn params() -> TestParams {
    TestParams {
        name: "lin-kv".into(),
        workload: "lin-kv".into(),
        bin: "./node <1>".into(),
        args: vec!["--x".into()],
        nodes: vec!["n0".into(), "n1".into(), "n2".into()],
        concurrency: 6,
        rate: 5.0,
        time_limit_s: 10.0,
        latency_ms: 0,
        latency_dist: "constant".into(),
        nemesis: vec!["partition".into()],
        nemesis_interval_s: 10.0,
        p_loss: 0.0,
        p_dup: 0.0,
        seed: 42,
        availability: None,
        strict_null_reads: false,
        strict_protocol: false,
        read_on_bad_lines: false,
        started: "2026-12-02T07:15:44Z".into(),
        cwd: "/tmp".into(),
        command: vec!["oncekv".into(), "test".into()],
        command_line: "oncekv test --seed 42".into(),
    }
}

#[test]
fn the_run_page_holds_every_section_and_fetches_nothing() {
    let ops = with_partitions();
    let windows = fault_windows(&ops);
    let r = results_for(&mixed()).with_test(params());
    let text = summary(&r);
    assert!(text.contains("re-run: oncekv test --seed 42"), "{text}");
    let page = run_page(&r, &text, &ops, &windows, true);
    for part in [
        "<h1>lin-kv: <span class=\"invalid\">INVALID</span></h1>",
        "<pre class=\"command\">oncekv test --seed 42</pre>",
        "<td>./node &lt;1&gt;</td>",
        "<tr><th>f</th><th>count</th>",
        "Latency by operation type",
        "Throughput",
        "<table class=\"nemesis\">",
        "<div class=\"timeline\"",
        "href=\"../../index.html\"",
    ] {
        assert!(page.contains(part), "no {part:?} in the page");
    }
    assert_eq!(count(&page, "<svg"), 2);
    assert!(!page.contains("<script"), "no script");
    let no_namespace = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!no_namespace.contains("http"), "nothing fetched");
    let alone = run_page(&r, &text, &ops, &windows, false);
    assert!(
        !alone.contains("../../index.html"),
        "outside a store, no link up"
    );
}

#[test]
fn the_store_page_lists_runs_newest_first() {
    let run = |path: &str, valid, seed| RunEntry {
        path: path.into(),
        valid,
        test: Some(TestParams { seed, ..params() }),
        workload: "lin-kv".into(),
        ops: 10,
        ok_fraction: 0.5,
    };
    let page = store_page(&[
        run("lin-kv/20261202T071544.123Z", Some(Validity::Valid), 1),
        run(
            "exactly-once/20261202T081544.123Z",
            Some(Validity::Invalid),
            2,
        ),
        run("lin-kv/20261202T091544.123Z", None, 3),
    ]);
    let newest = page.find("20261202T091544").expect("listed");
    let middle = page.find("20261202T081544").expect("listed");
    let oldest = page.find("20261202T071544").expect("listed");
    assert!(newest < middle && middle < oldest, "{page}");
    assert!(
        page.contains(">no verdict<") && page.contains(">INVALID<") && page.contains(">VALID<")
    );
    assert!(page.contains("<a href=\"lin-kv/20261202T071544.123Z/index.html\">"));
    assert!(page.contains("<th>seed</th>") && page.contains("<td class=\"n\">2</td>"));
}

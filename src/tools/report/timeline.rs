//! The timeline of operations, as Jepsen's `timeline.html` (which Maelstrom
//! writes for every run): one column per process, time running down, each op a
//! box from its invoke to its completion, coloured by outcome (ok, fail, info;
//! never completed: info with a dashed edge), the op on hover. Nemesis periods
//! are bands across every column.
//!
//! Plain HTML and CSS, no script; a pure function of the ops and the windows.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::svg::{Window, escape};
use crate::tools::check::pairs::pair_ops;
use crate::tools::history::{HistoryOp, OpType, Process};

/// Most ops drawn (Jepsen's timeline stops at 10,000 too): past it, the first
/// this many by invoke are drawn and the page says so. Keeps the page a few MB.
pub const MAX_OPS: usize = 10_000;

/// Pixels per millisecond at most (Jepsen: 1), fewer for a long run so the whole
/// timeline stays within [`MAX_HEIGHT_PX`].
const PX_PER_MS: f64 = 1.0;
const MAX_HEIGHT_PX: f64 = 40_000.0;
/// A box is at least this tall, so an instant op is still visible.
const MIN_BOX_PX: f64 = 2.0;
/// The time gutter on the left and the header row, in pixels.
const GUTTER_PX: f64 = 56.0;
const HEADER_PX: f64 = 22.0;
/// Column widths: wide enough for a label when few, at least this when many.
const COLUMN_PX_MAX: f64 = 110.0;
const COLUMN_PX_MIN: f64 = 14.0;
/// The total width the columns aim for when there are many.
const COLUMNS_PX: f64 = 1400.0;

/// Jepsen's timeline colours for ok, fail, info.
const OK: &str = "#6DB6FE";
const FAIL: &str = "#FEB5DA";
const INFO: &str = "#FFAA26";

/// The CSS the timeline needs (once per page).
pub const STYLE: &str = ".timeline{position:relative;font:11px sans-serif}\
.timeline .op{position:absolute;box-sizing:border-box;border:1px solid rgba(0,0,0,.35);\
overflow:hidden;white-space:nowrap;padding:0 2px;line-height:12px}\
.timeline .open{border-style:dashed}\
.timeline .hdr{position:absolute;top:0;height:20px;text-align:center;font-weight:bold;overflow:hidden}\
.timeline .tick{position:absolute;left:0;width:50px;text-align:right;color:#444;border-top:1px solid #999}\
.timeline .band{position:absolute;background:rgba(136,136,136,.22)}\
.timeline .band.kill{background:rgba(214,39,40,.12)}\
.timeline .bandno{position:absolute;left:2px;font-size:10px;color:#333}";

/// The timeline as an HTML fragment (a `div`), plus a one-line note of what was
/// left out, if anything.
pub fn timeline_html(ops: &[HistoryOp], windows: &[Window]) -> String {
    let pairs = pair_ops(ops).pairs;
    let shown = &pairs[..pairs.len().min(MAX_OPS)];
    let processes: Vec<u64> = shown
        .iter()
        .filter_map(|p| match ops[p.invoke].process {
            Process::Client(n) => Some(n),
            Process::Nemesis => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let end_ns = ops.iter().map(|o| o.time).max().unwrap_or(0);
    let end_ms = (end_ns as f64 / 1e6).max(1.0);
    let scale = PX_PER_MS.min(MAX_HEIGHT_PX / end_ms);
    let y = |ns: u64| HEADER_PX + ns as f64 / 1e6 * scale;
    let col = (COLUMNS_PX / processes.len().max(1) as f64).clamp(COLUMN_PX_MIN, COLUMN_PX_MAX);
    let x = |p: u64| {
        let i = processes.binary_search(&p).unwrap_or(0);
        GUTTER_PX + i as f64 * col
    };
    let width = GUTTER_PX + col * processes.len() as f64;
    let height = y(end_ns) + 20.0;
    let mut out = String::new();
    if pairs.len() > shown.len() {
        let _ = writeln!(
            out,
            "<p class=\"note\">The first {} of {} ops are drawn.</p>",
            shown.len(),
            pairs.len()
        );
    }
    let _ = writeln!(
        out,
        "<div class=\"timeline\" style=\"width:{width:.0}px;height:{height:.0}px\">"
    );
    for (i, (start, end, description)) in windows.iter().enumerate() {
        let (top, bottom) = (y(*start), y(end.unwrap_or(end_ns)));
        let kill = if description.starts_with("kill") {
            " kill"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<div class=\"band{kill}\" style=\"left:0;top:{top:.1}px;width:{width:.0}px;height:{:.1}px\" \
             title=\"#{} {}\"><span class=\"bandno\">#{}</span></div>",
            (bottom - top).max(1.0),
            i + 1,
            escape(description),
            i + 1
        );
    }
    let step = tick_step_s(end_ms / 1e3, scale);
    let mut t = 0.0;
    while t * 1e3 <= end_ms {
        let _ = writeln!(
            out,
            "<div class=\"tick\" style=\"top:{:.1}px\">{} s</div>",
            y((t * 1e9) as u64),
            trim(t)
        );
        t += step;
    }
    for p in &processes {
        let _ = writeln!(
            out,
            "<div class=\"hdr\" style=\"left:{:.1}px;width:{:.1}px\" title=\"process {p}\">{p}</div>",
            x(*p),
            col - 2.0
        );
    }
    for pair in shown {
        let invoke = &ops[pair.invoke];
        let Process::Client(p) = invoke.process else {
            continue;
        };
        let done = pair.completion.map(|c| &ops[c]);
        let (colour, class) = match done.map(|d| d.kind) {
            Some(OpType::Ok) => (OK, "op ok"),
            Some(OpType::Fail) => (FAIL, "op fail"),
            Some(_) => (INFO, "op info"),
            None => (INFO, "op info open"),
        };
        let end = done.map_or(end_ns, |d| d.time);
        let top = y(invoke.time);
        let h = (y(end) - top).max(MIN_BOX_PX);
        let label = if h >= 12.0 && col >= 50.0 {
            escape(&short(invoke, done))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<div class=\"{class}\" style=\"left:{:.1}px;top:{top:.1}px;width:{:.1}px;height:{h:.1}px;background:{colour}\" \
             title=\"{}\">{label}</div>",
            x(p),
            col - 2.0,
            escape(&describe(p, invoke, done))
        );
    }
    out.push_str("</div>\n");
    out
}

/// Seconds between time ticks: round, and at least ~60 px apart.
fn tick_step_s(span_s: f64, px_per_ms: f64) -> f64 {
    let min_s = 60.0 / (px_per_ms * 1e3);
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
        .into_iter()
        .find(|s| *s >= min_s)
        .unwrap_or(span_s.max(60.0))
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn value_text(op: &HistoryOp) -> String {
    match &op.key {
        Some(k) => format!("{} {k} {}", op.f, op.value),
        None => format!("{} {}", op.f, op.value),
    }
}

/// The box's text: the op as it completed (its invoke if it never did).
fn short(invoke: &HistoryOp, done: Option<&HistoryOp>) -> String {
    let op = done.unwrap_or(invoke);
    let mut text = value_text(&HistoryOp {
        key: op.key.clone().or_else(|| invoke.key.clone()),
        ..op.clone()
    });
    if text.chars().count() > 40 {
        text = text.chars().take(40).collect::<String>() + "…";
    }
    text
}

/// The hover text: process, the op invoked and how it ended, times.
fn describe(process: u64, invoke: &HistoryOp, done: Option<&HistoryOp>) -> String {
    let t = |ns: u64| format!("{:.3} s", ns as f64 / 1e9);
    let mut s = format!(
        "process {process}\ninvoke {} at {}",
        value_text(invoke),
        t(invoke.time)
    );
    match done {
        Some(d) => {
            let kind = match d.kind {
                OpType::Ok => "ok",
                OpType::Fail => "fail",
                _ => "info",
            };
            let _ = write!(
                s,
                "\n{kind} {} at {} ({:.3} ms)",
                d.value,
                t(d.time),
                d.time.saturating_sub(invoke.time) as f64 / 1e6
            );
            if let Some((code, text)) = &d.error {
                let _ = write!(s, "\nerror {code}: {text}");
            }
        }
        None => s.push_str("\nnever completed (info)"),
    }
    if let (Some(c), Some(q)) = (&invoke.client_id, invoke.seq) {
        let _ = write!(s, "\nsession {c} seq {q}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_apart() {
        assert_eq!(tick_step_s(10.0, 1.0), 0.1);
        assert_eq!(tick_step_s(60.0, 0.5), 0.2);
        assert_eq!(trim(1.50), "1.5");
    }
}

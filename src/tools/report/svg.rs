//! The plots, as hand-written SVG (no crate, no script, a file any browser opens,
//! and inline in the run's `index.html`):
//! - [`latency_svg`]: one panel per operation type (`f`), each op a dot at
//!   (invoke time, latency), latency on a log scale shared by the panels, coloured
//!   by outcome, as Jepsen's `latency-raw.png`.
//! - [`throughput_svg`]: completed ops per second over time, one line per `f`
//!   (ok solid, fail or info dashed), as Jepsen's `rate.png`.
//!
//! Both shade the nemesis periods (numbered in time order, the op's value on
//! hover) on one shared time axis. They only draw: pure functions of the ops and
//! the windows, no I/O.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use crate::tools::check::pairs::pair_ops;
use crate::tools::history::{HistoryOp, OpType};

/// Canvas width and the plot area's left and right edges, in pixels.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 820.0;
/// Room for the title above the first panel.
const TOP: f64 = 44.0;
/// One latency panel's height, and the gap (with the next panel's title) below it.
const PANEL_HEIGHT: f64 = 190.0;
const PANEL_GAP: f64 = 34.0;
/// The throughput plot's height.
const RATE_HEIGHT: f64 = 300.0;
/// Room below the last panel for the time axis's labels and title.
const AXIS_ROOM: f64 = 50.0;

/// Most dots drawn over all panels. Dots that land on the same half-pixel with
/// the same colour are drawn once; past this cap every k-th remaining dot is
/// kept, and the title says so. Keeps a 100k-op plot to a few MB at most.
pub const MAX_DOTS: usize = 50_000;

/// About how many time buckets the throughput plot has: few enough that a
/// bucket holds several ops at Maelstrom's default rate (5/s over 60 s).
const THROUGHPUT_BUCKETS: f64 = 30.0;

/// Latencies below this (1 µs) are drawn at it: a log axis has no zero.
const MIN_LATENCY_MS: f64 = 0.001;

/// (fill colour, legend label) for ok, fail, info.
const CLASSES: [(&str, &str); 3] = [("#1f77b4", "ok"), ("#d62728", "fail"), ("#ff7f0e", "info")];

/// Line colours of the throughput plot, one per `f` in name order (cycled).
const F_COLOURS: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Shading of a partition and of a killed node's downtime.
const PARTITION_FILL: &str = "#888888";
const KILL_FILL: &str = "#d62728";

/// One nemesis period: (start ns, end ns or `None` if it never ended,
/// description). See [`super::fault_windows`].
pub type Window = (u64, Option<u64>, String);

/// One op to draw: invoke time in seconds, latency in ms, class index.
#[derive(Debug, Clone, Copy)]
struct Dot {
    time_s: f64,
    latency_ms: f64,
    class: usize,
}

/// Renders the latency plot: a panel per `f`. Ops that never completed have no
/// latency and are not drawn.
pub fn latency_svg(ops: &[HistoryOp], windows: &[Window]) -> String {
    let by_f = dots_by_f(ops);
    let all: Vec<Dot> = by_f.values().flatten().copied().collect();
    let t_max = time_axis_end(ops, windows);
    let (decade_lo, decade_hi) = decades(&all);
    let panels = by_f.len().max(1);
    let height = TOP + panels as f64 * (PANEL_HEIGHT + PANEL_GAP) - PANEL_GAP + AXIS_ROOM;
    let mut svg = open_svg(height);
    let keep_every = {
        let unique: usize = by_f.values().map(|d| d.len()).sum();
        unique.div_ceil(MAX_DOTS).max(1)
    };
    let mut drawn = 0;
    let mut names: Vec<&str> = by_f.keys().map(String::as_str).collect();
    if names.is_empty() {
        names.push("(no completed op)");
    }
    for (i, f) in names.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + PANEL_GAP);
        let frame = Frame {
            top,
            bottom: top + PANEL_HEIGHT,
            t_max,
        };
        shade_windows(&mut svg, &frame, windows, i == 0);
        let y = LogY {
            lo: decade_lo,
            hi: decade_hi,
            frame: &frame,
        };
        y.draw(&mut svg);
        frame.draw_time_ticks(&mut svg, i + 1 == names.len());
        let dots = by_f.get(*f).map_or(&[][..], Vec::as_slice);
        let ok = dots.iter().filter(|d| d.class == 0).count();
        let _ = writeln!(
            svg,
            "<text class=\"panel\" x=\"{LEFT}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\">{} completed, {ok} ok</text>",
            top - 6.0,
            escape(f),
            LEFT + 8.0 + 8.0 * f.chars().count() as f64,
            top - 6.0,
            dots.len()
        );
        drawn += draw_dots(&mut svg, &y, dots, keep_every, f);
    }
    let bottom = TOP + panels as f64 * (PANEL_HEIGHT + PANEL_GAP) - PANEL_GAP;
    axis_titles(&mut svg, bottom, TOP, bottom, "latency (ms, log scale)");
    let note = if keep_every > 1 {
        format!(" ({drawn} dots drawn, 1 in {keep_every})")
    } else {
        String::new()
    };
    title(
        &mut svg,
        &format!(
            "Latency of {} completed ops by operation type{note}",
            all.len()
        ),
    );
    let mut legend: Vec<LegendItem> = CLASSES
        .iter()
        .map(|(c, l)| LegendItem::Dot(c, l.to_string()))
        .collect();
    legend.extend(window_legend(windows));
    draw_legend(&mut svg, &legend);
    svg.push_str("</svg>\n");
    svg
}

/// Renders the throughput plot: completed ops per second, per `f`, ok and not.
pub fn throughput_svg(ops: &[HistoryOp], windows: &[Window]) -> String {
    let t_max = time_axis_end(ops, windows);
    let bucket_s = nice_up(t_max / THROUGHPUT_BUCKETS);
    let buckets = (t_max / bucket_s).ceil().max(1.0) as usize;
    // f -> [ok counts, other counts] per bucket, by completion time.
    let mut counts: BTreeMap<String, [Vec<u64>; 2]> = BTreeMap::new();
    for p in pair_ops(ops).pairs {
        let Some(done) = p.completion else { continue };
        let b = ((ops[done].time as f64 / 1e9 / bucket_s) as usize).min(buckets - 1);
        let series = counts
            .entry(ops[p.invoke].f.clone())
            .or_insert_with(|| [vec![0; buckets], vec![0; buckets]]);
        series[usize::from(ops[done].kind != OpType::Ok)][b] += 1;
    }
    // A bucket's rate divides by its width; the last one may be cut short.
    let width_s = |b: usize| (t_max - b as f64 * bucket_s).clamp(bucket_s / 10.0, bucket_s);
    let rates: Vec<(String, usize, Vec<f64>)> = counts
        .iter()
        .flat_map(|(f, s)| {
            s.iter().enumerate().map(|(kind, c)| {
                let r = c
                    .iter()
                    .enumerate()
                    .map(|(b, &n)| n as f64 / width_s(b))
                    .collect();
                (f.clone(), kind, r)
            })
        })
        .filter(|(_, _, r): &(String, usize, Vec<f64>)| r.iter().any(|&x| x > 0.0))
        .collect();
    let y_max = rates
        .iter()
        .flat_map(|(_, _, r)| r.iter().copied())
        .fold(0.0, f64::max);
    let height = TOP + RATE_HEIGHT + AXIS_ROOM;
    let mut svg = open_svg(height);
    let frame = Frame {
        top: TOP,
        bottom: TOP + RATE_HEIGHT,
        t_max,
    };
    shade_windows(&mut svg, &frame, windows, true);
    let y = LinearY::fit(y_max, &frame);
    y.draw(&mut svg);
    frame.draw_time_ticks(&mut svg, true);
    let colour_of: BTreeMap<&str, &str> = counts
        .keys()
        .zip(F_COLOURS.iter().cycle())
        .map(|(f, c)| (f.as_str(), *c))
        .collect();
    for (f, kind, r) in &rates {
        let points: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(b, v)| {
                let mid = (b as f64 * bucket_s + width_s(b) / 2.0).min(t_max);
                format!("{:.1},{:.1}", frame.x(mid), y.y(*v))
            })
            .collect();
        let dash = if *kind == 0 {
            ""
        } else {
            " stroke-dasharray=\"5 3\""
        };
        let outcome = if *kind == 0 { "ok" } else { "fail or info" };
        let _ = writeln!(
            svg,
            "<polyline class=\"series\" data-f=\"{}\" data-outcome=\"{outcome}\" fill=\"none\" \
             stroke=\"{}\" stroke-width=\"1.6\"{dash} points=\"{}\"><title>{} {outcome}</title></polyline>",
            escape(f),
            colour_of[f.as_str()],
            points.join(" "),
            escape(f),
        );
    }
    axis_titles(&mut svg, frame.bottom, frame.top, frame.bottom, "ops/s");
    title(
        &mut svg,
        &format!(
            "Throughput: completed ops per second ({} s buckets)",
            trim_number(bucket_s)
        ),
    );
    let mut legend: Vec<LegendItem> = colour_of
        .iter()
        .map(|(f, c)| LegendItem::Line(c, f.to_string(), false))
        .collect();
    legend.push(LegendItem::Line("#333", "ok".into(), false));
    legend.push(LegendItem::Line("#333", "fail or info".into(), true));
    legend.extend(window_legend(windows));
    draw_legend(&mut svg, &legend);
    svg.push_str("</svg>\n");
    svg
}

fn open_svg(height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    )
}

/// The time axis runs from 0 to the last op or nemesis event, at least 1 s.
fn time_axis_end(ops: &[HistoryOp], windows: &[Window]) -> f64 {
    let end_ns = ops
        .iter()
        .map(|o| o.time)
        .chain(windows.iter().map(|w| w.0))
        .max()
        .unwrap_or(0);
    (end_ns as f64 / 1e9).max(1.0)
}

fn dots_by_f(ops: &[HistoryOp]) -> BTreeMap<String, Vec<Dot>> {
    let mut out: BTreeMap<String, Vec<Dot>> = BTreeMap::new();
    for p in pair_ops(ops).pairs {
        let Some(done) = p.completion else { continue };
        let done = &ops[done];
        let class = match done.kind {
            OpType::Ok => 0,
            OpType::Fail => 1,
            _ => 2,
        };
        let start = ops[p.invoke].time;
        let latency_ms = (done.time.saturating_sub(start) as f64 / 1e6).max(MIN_LATENCY_MS);
        out.entry(ops[p.invoke].f.clone()).or_default().push(Dot {
            time_s: start as f64 / 1e9,
            latency_ms,
            class,
        });
    }
    out
}

/// The decades (log10, ms) the latency axis spans: every dot, at least one decade.
fn decades(dots: &[Dot]) -> (i32, i32) {
    if dots.is_empty() {
        return (-1, 3);
    }
    let lat = dots.iter().map(|d| d.latency_ms.log10());
    let lo = lat.clone().fold(f64::INFINITY, f64::min).floor() as i32;
    let hi = lat.fold(f64::NEG_INFINITY, f64::max).ceil() as i32;
    (lo, hi.max(lo + 1))
}

/// One plot area: its vertical extent and the shared time axis.
struct Frame {
    top: f64,
    bottom: f64,
    /// Time axis end, seconds (it starts at 0).
    t_max: f64,
}

impl Frame {
    fn x(&self, time_s: f64) -> f64 {
        LEFT + (RIGHT - LEFT) * (time_s / self.t_max).clamp(0.0, 1.0)
    }

    /// The box, ticks every round number of seconds, labelled if `labels`.
    fn draw_time_ticks(&self, svg: &mut String, labels: bool) {
        let _ = writeln!(
            svg,
            "<rect x=\"{LEFT}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>",
            self.top,
            RIGHT - LEFT,
            self.bottom - self.top
        );
        let step = nice_step(self.t_max);
        for i in 0..=((self.t_max / step + 1e-9).floor() as usize) {
            let t = step * i as f64;
            let x = self.x(t);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>",
                self.bottom,
                self.bottom + 5.0
            );
            if labels {
                let _ = write!(
                    svg,
                    "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    self.bottom + 18.0,
                    trim_number(t)
                );
            }
            svg.push('\n');
        }
    }
}

/// A log-scale latency axis over whole decades.
struct LogY<'a> {
    lo: i32,
    hi: i32,
    frame: &'a Frame,
}

impl LogY<'_> {
    fn y(&self, latency_ms: f64) -> f64 {
        let span = f64::from(self.hi - self.lo);
        let frac = (latency_ms.log10() - f64::from(self.lo)) / span;
        self.frame.bottom - (self.frame.bottom - self.frame.top) * frac.clamp(0.0, 1.0)
    }

    fn draw(&self, svg: &mut String) {
        for decade in self.lo..=self.hi {
            let y = self.y(10f64.powi(decade));
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                y + 4.0,
                decade_label(decade)
            );
        }
    }
}

/// A linear axis from 0 to a round number at or above the data.
struct LinearY<'a> {
    max: f64,
    step: f64,
    frame: &'a Frame,
}

impl<'a> LinearY<'a> {
    fn fit(data_max: f64, frame: &'a Frame) -> LinearY<'a> {
        let step = nice_step(data_max.max(1.0) * 1.05);
        let max = ((data_max.max(1.0) * 1.05) / step).ceil() * step;
        LinearY { max, step, frame }
    }

    fn y(&self, v: f64) -> f64 {
        self.frame.bottom - (self.frame.bottom - self.frame.top) * (v / self.max).clamp(0.0, 1.0)
    }

    fn draw(&self, svg: &mut String) {
        for i in 0..=((self.max / self.step + 1e-9).round() as usize) {
            let v = self.step * i as f64;
            let y = self.y(v);
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                y + 4.0,
                trim_number(v)
            );
        }
    }
}

fn axis_titles(svg: &mut String, axis_bottom: f64, y_top: f64, y_bottom: f64, y_title: &str) {
    let mid_x = (LEFT + RIGHT) / 2.0;
    let mid_y = (y_top + y_bottom) / 2.0;
    let _ = writeln!(
        svg,
        "<text x=\"{mid_x}\" y=\"{}\" text-anchor=\"middle\">time since start (s)</text>\n\
         <text x=\"18\" y=\"{mid_y}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 18 {mid_y})\">{y_title}</text>",
        axis_bottom + 38.0
    );
}

/// A 1, 2 or 5 times a power of ten, giving at most 10 ticks over `span`.
pub(super) fn nice_step(span: f64) -> f64 {
    nice_up(span / 10.0)
}

/// The smallest 1, 2 or 5 times a power of ten at or above `raw`.
pub(super) fn nice_up(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(raw)
}

fn decade_label(decade: i32) -> String {
    if decade >= 0 {
        format!("{}", 10u64.pow(decade.unsigned_abs()))
    } else {
        trim_number(10f64.powi(decade))
    }
}

pub(super) fn trim_number(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn is_kill(description: &str) -> bool {
    description.starts_with("kill")
}

/// Shades each window over the frame: a numbered band (number at the top when
/// `numbers` and it fits, on the first of [`LABEL_ROWS`] rows where it does not
/// overlap the previous number), its description and times on hover.
fn shade_windows(svg: &mut String, frame: &Frame, windows: &[Window], numbers: bool) {
    // Right edge of the last number placed on each row.
    let mut rows = [f64::NEG_INFINITY; LABEL_ROWS];
    for (i, (start, end, description)) in windows.iter().enumerate() {
        let x0 = frame.x(*start as f64 / 1e9);
        let x1 = end.map_or(RIGHT, |e| frame.x(e as f64 / 1e9));
        let (fill, opacity) = if is_kill(description) {
            (KILL_FILL, 0.12)
        } else {
            (PARTITION_FILL, 0.22)
        };
        let until = end.map_or("the end".to_string(), |e| {
            format!("{} s", trim_number(round_ms(e)))
        });
        let _ = write!(
            svg,
            "<rect class=\"nemesis\" data-start-ns=\"{start}\" data-end-ns=\"{}\" x=\"{x0:.1}\" \
             y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{fill}\" fill-opacity=\"{opacity}\">\
             <title>#{} {} s to {until}: {}</title></rect>",
            end.map_or(String::new(), |e| e.to_string()),
            frame.top,
            (x1 - x0).max(1.0),
            frame.bottom - frame.top,
            i + 1,
            trim_number(round_ms(*start)),
            escape(description)
        );
        let label = (i + 1).to_string();
        let half = 3.5 * label.len() as f64 + 2.0;
        let mid = (x0 + x1) / 2.0;
        let row = rows.iter().position(|&right| mid - half > right);
        if let (true, Some(row)) = (numbers && x1 - x0 >= 2.0 * half, row) {
            rows[row] = mid + half;
            let _ = write!(
                svg,
                "<text x=\"{mid:.1}\" y=\"{}\" font-size=\"10\" fill=\"#333\" text-anchor=\"middle\">{label}</text>",
                frame.top + 12.0 + 12.0 * row as f64,
            );
        }
        svg.push('\n');
    }
}

/// Rows of window numbers at the top of a plot.
const LABEL_ROWS: usize = 2;

fn round_ms(ns: u64) -> f64 {
    (ns as f64 / 1e6).round() / 1e3
}

/// Draws one panel's dots, one group per class; returns how many were drawn.
fn draw_dots(svg: &mut String, y: &LogY<'_>, dots: &[Dot], keep_every: usize, f: &str) -> usize {
    let mut seen = HashSet::new();
    let unique: Vec<(usize, f64, f64)> = dots
        .iter()
        .map(|d| (d.class, y.frame.x(d.time_s), y.y(d.latency_ms)))
        .filter(|&(c, x, y)| seen.insert((c, (x * 2.0).round() as i64, (y * 2.0).round() as i64)))
        .collect();
    let mut drawn = 0;
    for (class, (colour, label)) in CLASSES.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<g class=\"dots\" data-f=\"{}\" data-outcome=\"{label}\" fill=\"{colour}\" fill-opacity=\"0.7\">",
            escape(f)
        );
        for &(_, x, y) in unique.iter().filter(|d| d.0 == class).step_by(keep_every) {
            let _ = writeln!(svg, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.6\"/>");
            drawn += 1;
        }
        svg.push_str("</g>\n");
    }
    drawn
}

fn title(svg: &mut String, text: &str) {
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        (LEFT + RIGHT) / 2.0,
        escape(text)
    );
}

enum LegendItem {
    /// A dot of this colour.
    Dot(&'static str, String),
    /// A line of this colour, dashed or not.
    Line(&'static str, String, bool),
    /// A shaded square of this colour and opacity.
    Band(&'static str, f64, String),
}

fn window_legend(windows: &[Window]) -> Vec<LegendItem> {
    let mut out = Vec::new();
    if windows.iter().any(|w| !is_kill(&w.2)) {
        out.push(LegendItem::Band(
            PARTITION_FILL,
            0.4,
            "partition".to_string(),
        ));
    }
    if windows.iter().any(|w| is_kill(&w.2)) {
        out.push(LegendItem::Band(KILL_FILL, 0.3, "node down".to_string()));
    }
    out
}

fn draw_legend(svg: &mut String, items: &[LegendItem]) {
    let x = RIGHT + 20.0;
    for (i, item) in items.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * i as f64;
        let label = match item {
            LegendItem::Dot(colour, label) => {
                let _ = write!(
                    svg,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"4\" fill=\"{colour}\"/>"
                );
                label
            }
            LegendItem::Line(colour, label, dashed) => {
                let dash = if *dashed {
                    " stroke-dasharray=\"5 3\""
                } else {
                    ""
                };
                let _ = write!(
                    svg,
                    "<line x1=\"{}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
                    x - 8.0,
                    x + 4.0
                );
                label
            }
            LegendItem::Band(colour, opacity, label) => {
                let _ = write!(
                    svg,
                    "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\" fill-opacity=\"{opacity}\"/>",
                    x - 5.0,
                    y - 5.0
                );
                label
            }
        };
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            x + 10.0,
            y + 4.0,
            escape(label)
        );
    }
}

/// Escapes text for XML and HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice_step(60.0), 10.0);
        assert_eq!(nice_step(1.0), 0.1);
        assert_eq!(nice_step(13.0), 2.0);
        assert_eq!(nice_up(1.0), 1.0);
        assert_eq!(nice_up(0.33), 0.5);
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}

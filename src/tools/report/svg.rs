//! `latency.svg`: each op a dot at (invoke time, latency), latency on a log
//! scale, coloured by outcome, with nemesis periods (partitions, kills) shaded. Hand-written SVG:
//! no crate, and a file any browser opens.
//!
//! It only draws: a pure function of the ops and the nemesis windows, no I/O.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::tools::check::pairs::pair_ops;
use crate::tools::history::{HistoryOp, OpType};

/// Canvas size and the plot area inside it, in pixels.
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 820.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 420.0;

/// Most dots drawn. Dots that land on the same half-pixel with the same colour
/// are drawn once; past this cap every k-th remaining dot is kept, and the title
/// says so. Keeps a 100k-op plot to a few MB at most.
pub const MAX_DOTS: usize = 50_000;

/// Latencies below this (1 µs) are drawn at it: a log axis has no zero.
const MIN_LATENCY_MS: f64 = 0.001;

/// (fill colour, legend label) for ok, fail, info.
const CLASSES: [(&str, &str); 3] = [("#1f77b4", "ok"), ("#d62728", "fail"), ("#ff7f0e", "info")];

/// One op to draw: invoke time in seconds, latency in ms, class index.
#[derive(Debug, Clone, Copy)]
struct Dot {
    time_s: f64,
    latency_ms: f64,
    class: usize,
}

/// Renders the plot. `partitions` are (start ns, end ns or `None` if never
/// healed, description); ops that never completed have no latency and are not
/// drawn.
pub fn latency_svg(ops: &[HistoryOp], partitions: &[(u64, Option<u64>, String)]) -> String {
    let dots = dots(ops);
    let end_ns = ops
        .iter()
        .map(|o| o.time)
        .chain(partitions.iter().map(|p| p.0))
        .max();
    let axes = Axes::fit(&dots, end_ns.unwrap_or(0));
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    shade_partitions(&mut svg, &axes, partitions);
    axes.draw(&mut svg);
    let drawn = draw_dots(&mut svg, &axes, &dots);
    title(&mut svg, dots.len(), drawn);
    legend(&mut svg);
    svg.push_str("</svg>\n");
    svg
}

fn dots(ops: &[HistoryOp]) -> Vec<Dot> {
    let pairing = pair_ops(ops);
    pairing
        .pairs
        .iter()
        .filter_map(|p| {
            let done = &ops[p.completion?];
            let class = match done.kind {
                OpType::Ok => 0,
                OpType::Fail => 1,
                _ => 2,
            };
            let start = ops[p.invoke].time;
            let latency_ms = (done.time.saturating_sub(start) as f64 / 1e6).max(MIN_LATENCY_MS);
            Some(Dot {
                time_s: start as f64 / 1e9,
                latency_ms,
                class,
            })
        })
        .collect()
}

/// The data ranges and their mapping to pixels.
struct Axes {
    /// Time axis end, seconds (starts at 0).
    t_max: f64,
    /// log10 of the latency axis ends, ms.
    decade_lo: i32,
    decade_hi: i32,
}

impl Axes {
    fn fit(dots: &[Dot], end_ns: u64) -> Axes {
        let t_max = (end_ns as f64 / 1e9).max(1.0);
        let lat = dots.iter().map(|d| d.latency_ms.log10());
        let lo = lat.clone().fold(f64::INFINITY, f64::min);
        let hi = lat.fold(f64::NEG_INFINITY, f64::max);
        let (decade_lo, decade_hi) = if dots.is_empty() {
            (-1, 3)
        } else {
            (
                lo.floor() as i32,
                (hi.ceil() as i32).max(lo.floor() as i32 + 1),
            )
        };
        Axes {
            t_max,
            decade_lo,
            decade_hi,
        }
    }

    fn x(&self, time_s: f64) -> f64 {
        LEFT + (RIGHT - LEFT) * (time_s / self.t_max).clamp(0.0, 1.0)
    }

    fn y(&self, latency_ms: f64) -> f64 {
        let span = f64::from(self.decade_hi - self.decade_lo);
        let frac = (latency_ms.log10() - f64::from(self.decade_lo)) / span;
        BOTTOM - (BOTTOM - TOP) * frac.clamp(0.0, 1.0)
    }

    fn draw(&self, svg: &mut String) {
        let _ = writeln!(
            svg,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>",
            RIGHT - LEFT,
            BOTTOM - TOP
        );
        for decade in self.decade_lo..=self.decade_hi {
            let y = self.y(10f64.powi(decade));
            let label = decade_label(decade);
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                LEFT - 6.0,
                y + 4.0
            );
        }
        let step = nice_step(self.t_max);
        for i in 0..=((self.t_max / step).floor() as usize) {
            let t = step * i as f64;
            let x = self.x(t);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{BOTTOM}\" y2=\"{}\" stroke=\"black\"/>\
                 <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                BOTTOM + 5.0,
                BOTTOM + 18.0,
                trim_number(t)
            );
        }
        let (mid_x, mid_y) = ((LEFT + RIGHT) / 2.0, (TOP + BOTTOM) / 2.0);
        let _ = writeln!(
            svg,
            "<text x=\"{mid_x}\" y=\"{}\" text-anchor=\"middle\">time since start (s)</text>\n\
             <text x=\"18\" y=\"{mid_y}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 18 {mid_y})\">latency (ms, log scale)</text>",
            BOTTOM + 40.0
        );
    }
}

/// A 1, 2 or 5 times a power of ten, giving at most 10 ticks over `span`.
fn nice_step(span: f64) -> f64 {
    let raw = span / 10.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw)
}

fn decade_label(decade: i32) -> String {
    if decade >= 0 {
        format!("{}", 10u64.pow(decade.unsigned_abs()))
    } else {
        trim_number(10f64.powi(decade))
    }
}

fn trim_number(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn shade_partitions(svg: &mut String, axes: &Axes, partitions: &[(u64, Option<u64>, String)]) {
    for (start, end, description) in partitions {
        let x0 = axes.x(*start as f64 / 1e9);
        let x1 = end.map_or(RIGHT, |e| axes.x(e as f64 / 1e9));
        let text = escape(description);
        let label: String = description.chars().take(24).collect();
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#888\" \
             fill-opacity=\"0.18\"><title>{text}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"9\" fill=\"#555\">{}</text>",
            (x1 - x0).max(1.0),
            BOTTOM - TOP,
            x0 + 2.0,
            TOP + 10.0,
            escape(&label)
        );
    }
}

/// Draws the dots, one group per class; returns how many were drawn.
fn draw_dots(svg: &mut String, axes: &Axes, dots: &[Dot]) -> usize {
    let mut seen = HashSet::new();
    let unique: Vec<(usize, f64, f64)> = dots
        .iter()
        .map(|d| (d.class, axes.x(d.time_s), axes.y(d.latency_ms)))
        .filter(|&(c, x, y)| seen.insert((c, (x * 2.0).round() as i64, (y * 2.0).round() as i64)))
        .collect();
    let keep_every = unique.len().div_ceil(MAX_DOTS).max(1);
    let mut drawn = 0;
    for (class, (colour, _)) in CLASSES.iter().enumerate() {
        let _ = writeln!(svg, "<g fill=\"{colour}\" fill-opacity=\"0.7\">");
        for &(_, x, y) in unique.iter().filter(|d| d.0 == class).step_by(keep_every) {
            let _ = writeln!(svg, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.6\"/>");
            drawn += 1;
        }
        svg.push_str("</g>\n");
    }
    drawn
}

fn title(svg: &mut String, ops: usize, drawn: usize) {
    let note = if drawn < ops {
        format!(" ({drawn} dots drawn)")
    } else {
        String::new()
    };
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">\
         Latency of {ops} completed ops{note}</text>",
        (LEFT + RIGHT) / 2.0
    );
}

fn legend(svg: &mut String) {
    let x = RIGHT + 20.0;
    for (i, (colour, label)) in CLASSES.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            "<circle cx=\"{x}\" cy=\"{y}\" r=\"4\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\">{label}</text>",
            x + 10.0,
            y + 4.0
        );
    }
    let y = TOP + 10.0 + 20.0 * CLASSES.len() as f64;
    let _ = writeln!(
        svg,
        "<rect x=\"{}\" y=\"{}\" width=\"8\" height=\"8\" fill=\"#888\" fill-opacity=\"0.4\"/>\
         <text x=\"{}\" y=\"{}\">fault</text>",
        x - 4.0,
        y - 4.0,
        x + 10.0,
        y + 4.0
    );
}

fn escape(text: &str) -> String {
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
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}

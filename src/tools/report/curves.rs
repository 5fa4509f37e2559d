//! [`curves_svg`]: how figures grow with one dimension of the work, as
//! hand-written SVG like the other plots ([`super::svg`]): panels side by side,
//! one per figure (throughput, p99, memory...), sharing the x axis (the
//! dimension, on a log scale when it spans decades), one line per system.
//!
//! Pure: a function of the numbers, no I/O.

use std::fmt::Write as _;

use super::svg::{escape, nice_step, trim_number};

/// One line of a panel: a system's value at each x (a missing value leaves a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Legend label (`oncekv`, `etcd`).
    pub name: String,
    /// (x, y) in x order; y `None` where the system has no figure at that x.
    pub points: Vec<(f64, Option<f64>)>,
}

/// One panel: a figure against the dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// The y axis title, with its unit (`p99 ms`).
    pub y_label: String,
    /// The lines.
    pub curves: Vec<Curve>,
}

/// The whole figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// Above the panels.
    pub title: String,
    /// The x axis title (`live sessions`).
    pub x_label: String,
    /// Log-scaled x axis (for dimensions that grow by decades).
    pub x_log: bool,
    /// The panels, left to right.
    pub panels: Vec<Panel>,
}

/// One panel's size and the room around it, in pixels.
const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 220.0;
const MARGIN_LEFT: f64 = 70.0;
const GAP: f64 = 40.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 60.0;

/// Line colours by curve index (oncekv first, then etcd, then more).
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Renders `c` as an SVG document.
pub fn curves_svg(c: &Curves) -> String {
    let panels = c.panels.len().max(1) as f64;
    let width = MARGIN_LEFT + panels * (PANEL_W + GAP + MARGIN_LEFT) - MARGIN_LEFT;
    let height = TOP + PANEL_H + BOTTOM;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN_LEFT}\" y=\"22\" font-size=\"15\">{}</text>\n",
        escape(&c.title)
    );
    let xs: Vec<f64> = (c.panels.iter())
        .flat_map(|p| p.curves.iter().flat_map(|k| k.points.iter().map(|p| p.0)))
        .filter(|x| x.is_finite() && (!c.x_log || *x > 0.0))
        .collect();
    let x_axis = Axis::new(&xs, c.x_log, false);
    for (i, panel) in c.panels.iter().enumerate() {
        let left = MARGIN_LEFT + i as f64 * (PANEL_W + GAP + MARGIN_LEFT);
        draw_panel(&mut svg, c, panel, &x_axis, left);
    }
    // The legend, once, from the first panel's curves.
    if let Some(first) = c.panels.first() {
        for (j, curve) in first.curves.iter().enumerate() {
            let x = MARGIN_LEFT + 260.0 + j as f64 * 110.0;
            let colour = COLOURS[j % COLOURS.len()];
            let _ = writeln!(
                svg,
                "<line x1=\"{x}\" x2=\"{}\" y1=\"40\" y2=\"40\" stroke=\"{colour}\" stroke-width=\"2\"/>\
                 <text x=\"{}\" y=\"44\">{}</text>",
                x + 18.0,
                x + 24.0,
                escape(&curve.name)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Draws one panel with its left edge at `left`.
fn draw_panel(svg: &mut String, c: &Curves, panel: &Panel, x_axis: &Axis, left: f64) {
    let ys: Vec<f64> = (panel.curves.iter())
        .flat_map(|k| k.points.iter().filter_map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let y_axis = Axis::new(&ys, false, true);
    let (top, bottom, right) = (TOP, TOP + PANEL_H, left + PANEL_W);
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#999\"/>"
    );
    let px = |x: f64| left + x_axis.fraction(x) * PANEL_W;
    let py = |y: f64| bottom - y_axis.fraction(y) * PANEL_H;
    for t in &x_axis.ticks {
        let x = px(*t);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            bottom + 16.0,
            short(*t)
        );
    }
    for t in &y_axis.ticks {
        let y = py(*t);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{right}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 4.0,
            short(*t)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate({},{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        left + PANEL_W / 2.0,
        bottom + 40.0,
        escape(&c.x_label),
        left - 52.0,
        top + PANEL_H / 2.0,
        escape(&panel.y_label)
    );
    for (j, curve) in panel.curves.iter().enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        // Consecutive drawable points form one polyline; a missing one breaks it.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &curve.points {
            match y {
                Some(y) if y.is_finite() && x_axis.contains(x) => {
                    runs.last_mut().expect("a run").push((px(x), py(y)))
                }
                _ => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                pts.join(" ")
            );
            for (x, y) in run {
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"/>"
                );
            }
        }
    }
}

/// A value axis: its range, scale and tick positions.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    /// An axis covering `values`: log by decades, or linear with round ticks
    /// (from zero if `from_zero`).
    fn new(values: &[f64], log: bool, from_zero: bool) -> Axis {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !min.is_finite() || !max.is_finite() {
            return Axis {
                lo: 0.0,
                hi: 1.0,
                log: false,
                ticks: vec![0.0, 1.0],
            };
        }
        if log {
            let lo = 10f64.powf(min.log10().floor());
            let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
            let ticks = std::iter::successors(Some(lo), |t| Some(t * 10.0))
                .take_while(|t| *t <= hi * (1.0 + 1e-9))
                .collect();
            return Axis { lo, hi, log, ticks };
        }
        let lo = if from_zero { min.min(0.0) } else { min };
        let mut hi = if max > lo { max } else { lo + 1.0 };
        let step = nice_step(hi - lo);
        hi = (hi / step).ceil() * step;
        let ticks = std::iter::successors(Some(lo), |t| Some(t + step))
            .take_while(|t| *t <= hi + step * 1e-9)
            .collect();
        Axis { lo, hi, log, ticks }
    }

    /// Where `v` falls between the ends, 0..=1.
    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    /// Whether `v` can be drawn (inside the range; positive on a log axis).
    fn contains(&self, v: f64) -> bool {
        v.is_finite() && (!self.log || v > 0.0) && v >= self.lo && v <= self.hi
    }
}

/// A tick label: 1k, 1M, 2.5, 1000000 → 1M.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && (v / 1e6).fract() == 0.0 {
        format!("{}M", v / 1e6)
    } else if a >= 1e3 && (v / 1e3).fract() == 0.0 {
        format!("{}k", v / 1e3)
    } else {
        trim_number(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Curves {
        Curves {
            title: "writes vs <keys>".into(),
            x_label: "keys".into(),
            x_log: true,
            panels: vec![
                Panel {
                    y_label: "ops/s".into(),
                    curves: vec![
                        Curve {
                            name: "oncekv".into(),
                            points: vec![(1e3, Some(30_000.0)), (1e6, Some(28_000.0))],
                        },
                        Curve {
                            name: "etcd".into(),
                            points: vec![(1e3, Some(9_000.0)), (1e6, None)],
                        },
                    ],
                },
                Panel {
                    y_label: "p99 ms".into(),
                    curves: vec![Curve {
                        name: "oncekv".into(),
                        points: vec![(1e3, Some(2.0)), (1e4, None), (1e6, Some(3.0))],
                    }],
                },
            ],
        }
    }

    #[test]
    fn log_axis_spans_whole_decades_and_linear_axis_starts_at_zero() {
        let x = Axis::new(&[1_000.0, 1_000_000.0], true, false);
        assert_eq!((x.lo, x.hi), (1e3, 1e6));
        assert_eq!(x.ticks, vec![1e3, 1e4, 1e5, 1e6]);
        assert!((x.fraction(1e4) - 1.0 / 3.0).abs() < 1e-9);
        let y = Axis::new(&[9_000.0, 30_000.0], false, true);
        assert_eq!(y.lo, 0.0);
        assert!(y.hi >= 30_000.0 && y.hi < 40_000.0, "{y:?}");
        assert!(y.ticks.contains(&0.0) && y.ticks.len() >= 3);
        assert!(!x.contains(0.0) && !x.contains(2e6) && x.contains(5e4));
    }

    #[test]
    fn every_point_is_drawn_and_a_missing_one_breaks_the_line() {
        let svg = curves_svg(&sample());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Escaped title, both legend entries.
        assert!(svg.contains("writes vs &lt;keys&gt;"));
        assert!(svg.contains(">oncekv</text>") && svg.contains(">etcd</text>"));
        // 2 + 1 points in panel one, 1 + 1 in panel two (split by the gap).
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">1k</text>") && svg.contains(">1M</text>"));
    }

    #[test]
    fn empty_and_degenerate_inputs_still_render() {
        let mut c = sample();
        c.panels[0].curves[0].points = vec![(1e3, Some(f64::NAN))];
        c.panels[0].curves[1].points = vec![];
        c.panels[1].curves[0].points = vec![(0.0, Some(1.0))];
        let svg = curves_svg(&c);
        assert!(svg.ends_with("</svg>\n"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let none = Curves {
            panels: vec![],
            ..sample()
        };
        assert!(curves_svg(&none).ends_with("</svg>\n"));
        assert_eq!(short(2_500.0), "2500");
        assert_eq!(short(1_000_000.0), "1M");
        assert_eq!(short(0.5), "0.5");
    }
}

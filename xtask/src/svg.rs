//! Self-contained SVG line plots for the bench report, drawn by hand from the data.

use std::fmt::Write as _;

pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

struct Axes {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Axes {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.x0) / (self.x1 - self.x0).max(1e-12) * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (v - self.y0) / (self.y1 - self.y0).max(1e-12) * (H - TOP - BOTTOM)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws `series` (already transformed to plot coordinates) with the given tick labels.
fn plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    axes: &Axes,
    x_ticks: &[(f64, String)],
    y_ticks: &[(f64, String)],
    series: &[Series],
) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
    let (px0, px1, py0, py1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        s,
        "<rect x=\"{px0}\" y=\"{py0}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
        px1 - px0,
        py1 - py0
    );
    for (v, label) in x_ticks {
        let x = axes.x(*v);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{py0}\" x2=\"{x:.1}\" y2=\"{py1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            py1 + 14.0,
            escape(label)
        );
    }
    for (v, label) in y_ticks {
        let y = axes.y(*v);
        let _ = writeln!(
            s,
            "<line x1=\"{px0}\" y1=\"{y:.1}\" x2=\"{px1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            px0 - 4.0,
            y + 4.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(14,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (px0 + px1) / 2.0,
        H - 8.0,
        escape(x_label),
        (py0 + py1) / 2.0,
        escape(y_label)
    );
    for (i, series) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", axes.x(x), axes.y(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" points=\"{}\"/>\n\
             <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            pts.join(" "),
            px1 + 10.0,
            py0 + 10.0 + 18.0 * i as f64,
            px1 + 30.0,
            py0 + 10.0 + 18.0 * i as f64,
            px1 + 35.0,
            py0 + 14.0 + 18.0 * i as f64,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Latency CDF: x = latency (log scale, ms), y = percentile on a "nines" scale
/// (−log10(1 − q): 0 = 0 %, 1 = 90 %, 2 = 99 %, 3 = 99.9 %, 4 = 99.99 %).
pub(crate) fn latency_cdf(title: &str, series: &[Series]) -> String {
    const TOP_NINES: f64 = 4.3;
    let transformed: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s
                .points
                .iter()
                .map(|&(ms, q)| (ms.max(1e-3).log10(), (-(1.0 - q).log10()).min(TOP_NINES)))
                .collect(),
        })
        .collect();
    let xs = transformed
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (x0, x1) = if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (-1.0, 2.0)
    };
    let axes = Axes {
        x0,
        x1,
        y0: 0.0,
        y1: TOP_NINES,
    };
    let x_ticks: Vec<(f64, String)> = (x0 as i32..=x1 as i32)
        .map(|e| {
            let v = 10f64.powi(e);
            (
                f64::from(e),
                if v < 1.0 {
                    format!("{v}")
                } else {
                    format!("{v:.0}")
                },
            )
        })
        .collect();
    let y_ticks = vec![
        (0.0, "0%".to_owned()),
        (std::f64::consts::LOG10_2, "50%".to_owned()),
        (1.0, "90%".to_owned()),
        (2.0, "99%".to_owned()),
        (3.0, "99.9%".to_owned()),
        (4.0, "99.99%".to_owned()),
    ];
    plot(
        title,
        "latency, ms (log scale)",
        "requests at or below",
        &axes,
        &x_ticks,
        &y_ticks,
        &transformed,
    )
}

/// A value per second: x = seconds into the run, y from 0.
pub(crate) fn time_series(title: &str, y_label: &str, series: &[Series]) -> String {
    let x1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        .ceil();
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let step = nice_step(y_max.max(1e-3) / 5.0);
    let y1 = (y_max / step).ceil().max(1.0) * step;
    let axes = Axes {
        x0: 0.0,
        x1,
        y0: 0.0,
        y1,
    };
    let x_step = nice_step(x1 / 8.0).max(1.0);
    let x_ticks: Vec<(f64, String)> = (0..=(x1 / x_step) as u32)
        .map(|i| (f64::from(i) * x_step, format!("{}", f64::from(i) * x_step)))
        .collect();
    let y_ticks: Vec<(f64, String)> = (0..=(y1 / step).round() as u32)
        .map(|i| {
            let v = f64::from(i) * step;
            (v, format!("{v:.2}"))
        })
        .collect();
    plot(title, "seconds", y_label, &axes, &x_ticks, &y_ticks, series)
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_every_series() {
        let s = vec![
            Series {
                name: "edgeplane".into(),
                points: vec![(0.5, 0.5), (1.0, 0.9), (3.0, 0.99), (9.0, 1.0)],
            },
            Series {
                name: "nginx <1.22>".into(),
                points: vec![(0.7, 0.5), (2.0, 1.0)],
            },
        ];
        let cdf = latency_cdf("t", &s);
        assert!(cdf.starts_with("<svg") && cdf.trim_end().ends_with("</svg>"));
        assert_eq!(cdf.matches("<polyline").count(), 2);
        assert!(cdf.contains("nginx &lt;1.22&gt;"));
        assert!(cdf.contains(">99.9%<"));
        let ts = time_series("t", "Gbps", &s);
        assert_eq!(ts.matches("<polyline").count(), 2);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.0), 1.0);
    }
}

//! Line charts drawn on the server as SVG: no script, no library, a few hundred bytes a line.

use std::fmt::Write as _;

use maud::{html, Markup, PreEscaped};

/// One line of a chart: its name (the legend, and the class that colours it) and its points,
/// evenly spaced from the chart's left edge to its right.
pub(crate) struct Line<'a> {
    pub(crate) name: &'a str,
    pub(crate) points: Vec<f64>,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;
/// Room on the left for the axis figure.
const LEFT: f64 = 44.0;

/// A chart of `lines` under `title`, the x axis running from `from` to `to` (labels).
pub(crate) fn chart(title: &str, unit: &str, lines: &[Line<'_>], from: &str, to: &str) -> Markup {
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = nice_ceiling(top);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{title}">"#,
        w = WIDTH + LEFT,
        h = HEIGHT + 18.0,
        title = escape(title),
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{HEIGHT}" x2="{x2}" y2="{HEIGHT}"/><text class="tick" x="{tx}" y="10" text-anchor="end">{top}</text><text class="tick" x="{tx}" y="{HEIGHT}" text-anchor="end">0</text>"#,
        x2 = LEFT + WIDTH,
        tx = LEFT - 4.0,
        top = figure(top),
    );
    for line in lines {
        let n = line.points.len();
        if n == 0 {
            continue;
        }
        let step = if n > 1 { WIDTH / (n - 1) as f64 } else { 0.0 };
        let mut points = String::new();
        for (i, value) in line.points.iter().enumerate() {
            let y = if top > 0.0 {
                HEIGHT - (value.max(0.0) / top) * (HEIGHT - 12.0)
            } else {
                HEIGHT
            };
            let _ = write!(points, "{:.1},{:.1} ", LEFT + step * i as f64, y);
        }
        let _ = write!(
            svg,
            r#"<polyline class="line {name}" points="{points}"/>"#,
            name = escape(line.name),
        );
    }
    let _ = write!(
        svg,
        r#"<text class="tick" x="{LEFT}" y="{y}">{from}</text><text class="tick" x="{x}" y="{y}" text-anchor="end">{to}</text></svg>"#,
        y = HEIGHT + 14.0,
        x = LEFT + WIDTH,
        from = escape(from),
        to = escape(to),
    );
    html! {
        figure.chart data-chart=(title) {
            figcaption {
                (title) " " span.muted { "(" (unit) ")" }
                @for line in lines {
                    " " span class={ "legend " (line.name) } { (line.name) }
                }
            }
            (PreEscaped(svg))
        }
    }
}

/// A small line of `points` (no axis), its highest point at the top, for a table cell.
pub(crate) fn sparkline(points: &[f64], class: &str, title: &str) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 22.0;
    let top = points
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let step = if points.len() > 1 {
        W / (points.len() - 1) as f64
    } else {
        0.0
    };
    let mut line = String::new();
    for (i, value) in points.iter().enumerate() {
        let y = if top > 0.0 {
            H - 1.0 - (value.max(0.0) / top) * (H - 2.0)
        } else {
            H - 1.0
        };
        let _ = write!(line, "{:.1},{:.1} ", step * i as f64, y);
    }
    let svg = format!(
        r#"<svg class="spark" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{title}"><title>{title}</title><polyline class="line {class}" points="{line}"/></svg>"#,
        title = escape(title),
        class = escape(class),
    );
    PreEscaped(svg)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A round figure at or above `value` for the top of the axis: 1, 2 or 5 times a power of
/// ten.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 0.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= value)
        .unwrap_or(value)
}

/// `value` as the axis shows it: whole when it is, else to two places.
fn figure(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_top_is_a_round_figure_above_the_highest_point() {
        assert_eq!(nice_ceiling(0.0), 0.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(1234.0), 2000.0);
    }

    #[test]
    fn a_chart_draws_one_polyline_a_line_with_every_point_inside_it() {
        let lines = [
            Line {
                name: "accepted",
                points: vec![0.0, 5.0, 10.0],
            },
            Line {
                name: "failed",
                points: vec![1.0, 1.0, 1.0],
            },
        ];
        let svg = chart("Tasks <a second>", "per second", &lines, "−1 h", "now").into_string();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("Tasks &lt;a second&gt;"), "{svg}");
        assert!(!svg.contains("<a second>"), "escaped");
        // The highest point touches the top margin, the lowest the axis.
        assert!(
            svg.contains(&format!("{:.1},{:.1}", LEFT + WIDTH, 12.0)),
            "{svg}"
        );
        assert!(svg.contains(&format!("{:.1},{:.1}", LEFT, HEIGHT)), "{svg}");
    }
}

//! Line charts as SVG, written by hand: a comparison or a run needs three small
//! panels of a few lines each, not a plotting library.

use std::fmt::Write;
use std::path::Path;

use wdml_coordinator::MetricsRow;

/// One line of a chart (or, with `marks`, one set of points).
#[derive(Default)]
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    /// Points drawn as dots, not joined.
    pub marks: bool,
    /// A short label beside each point (none: no labels).
    pub labels: Vec<String>,
    pub points: Vec<(f64, f64)>,
}

/// A panel: its axes and lines.
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// A logarithmic x axis, for costs that differ by orders of magnitude.
    pub log_x: bool,
    pub series: Vec<Series<'a>>,
}

const WIDTH: f64 = 420.0;
const HEIGHT: f64 = 320.0;
const MARGIN: (f64, f64, f64, f64) = (60.0, 20.0, 40.0, 50.0); // left, right, top, bottom

/// Legend entries: this wide, wrapped onto as many rows as they need.
const LEGEND_ENTRY: f64 = 130.0;
const LEGEND_ROW: f64 = 18.0;

/// Panels side by side in one SVG document, with a shared legend.
pub fn figure(title: &str, panels: &[Panel]) -> String {
    let width = WIDTH * panels.len() as f64;
    let per_row = (((width - 20.0) / LEGEND_ENTRY).floor() as usize).max(1);
    let legend_rows = panels.first().map_or(0, |p| p.series.len().div_ceil(per_row));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" font-family="sans-serif" font-size="12">"#,
        HEIGHT + 22.0 + LEGEND_ROW * legend_rows.max(1) as f64
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        let _ = writeln!(svg, r#"<g transform="translate({},24)">"#, WIDTH * i as f64);
        draw(&mut svg, panel);
        let _ = writeln!(svg, "</g>");
    }
    if let Some(panel) = panels.first() {
        for (i, s) in panel.series.iter().enumerate() {
            let x = 20.0 + LEGEND_ENTRY * (i % per_row) as f64;
            let y = HEIGHT + 30.0 + LEGEND_ROW * (i / per_row) as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                x + 24.0,
                s.color,
                x + 30.0,
                y + 4.0,
                escape(s.name)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw(svg: &mut String, panel: &Panel) {
    let (left, right, top, bottom) = MARGIN;
    let (plot_w, plot_h) = (WIDTH - left - right, HEIGHT - top - bottom);
    let xs = |x: f64| {
        if panel.log_x {
            x.max(f64::MIN_POSITIVE).log10()
        } else {
            x
        }
    };
    let points = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let points: Vec<(f64, f64)> = points
        .filter(|(x, _)| !panel.log_x || *x > 0.0)
        .map(|&(x, y)| (xs(x), y))
        .collect();
    let (mut x0, mut x1) = bounds(points.iter().map(|p| p.0));
    let (mut y0, mut y1) = bounds(points.iter().map(|p| p.1));
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x0 + 1.0);
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.05, y0 + 0.05);
    }
    let px = |x: f64| left + (x - x0) / (x1 - x0) * plot_w;
    let py = |y: f64| top + plot_h - (y - y0) / (y1 - y0) * plot_h;

    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        WIDTH / 2.0,
        top - 14.0,
        escape(panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    // Enough decimals that the five y labels differ (0.008 J, not 0.01).
    let decimals = (1 - (y1 - y0).log10().floor() as i32).clamp(0, 6) as usize;
    for i in 0..=4 {
        let fy = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4:.5$}</text>"##,
            py(fy),
            left + plot_w,
            left - 6.0,
            py(fy) + 4.0,
            fy,
            decimals
        );
        let fx = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let label = if panel.log_x {
            format_si(10f64.powf(fx))
        } else {
            format_si(fx)
        };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
            px(fx),
            top + plot_h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        HEIGHT - 8.0,
        escape(panel.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{0}" text-anchor="middle" transform="rotate(-90 14 {0})">{1}</text>"#,
        top + plot_h / 2.0,
        escape(panel.y_label)
    );
    for s in &panel.series {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_x || *x > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(xs(x)), py(y)))
            .collect();
        if s.marks {
            for (i, &(x, y)) in s.points.iter().enumerate() {
                if !(x.is_finite() && y.is_finite() && (!panel.log_x || x > 0.0)) {
                    continue;
                }
                let (cx, cy) = (px(xs(x)), py(y));
                let _ = writeln!(svg, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="{}"/>"#, s.color);
                if let Some(label) = s.labels.get(i) {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                        cx + 6.0,
                        cy - 4.0,
                        escape(label)
                    );
                }
            }
        } else if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                path.join(" "),
                s.color
            );
        }
    }
}

/// Ten colours that stay apart (matplotlib's tab10), reused past ten series.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

/// A run at a glance, written beside `metrics.jsonl` as `rounds.svg`: per node, test
/// accuracy, cumulative radio energy and cumulative air time against rounds.
pub fn write_run_figure(run_dir: &Path, title: &str) -> anyhow::Result<()> {
    let rows = MetricsRow::read_all(run_dir)?;
    let path = run_dir.join("rounds.svg");
    wdml_proto::files::write_atomic(
        &path,
        run_figure(title, &rows).as_bytes(),
        wdml_proto::files::Mode::Public,
    )
    .map_err(|e| anyhow::anyhow!("cannot write {e}"))
}

fn run_figure(title: &str, rows: &[MetricsRow]) -> String {
    let mut nodes: Vec<(u32, &str)> = rows.iter().map(|r| (r.node, r.model.as_str())).collect();
    nodes.sort_unstable();
    nodes.dedup_by_key(|(node, _)| *node);
    // "3 cnn": the legend has room for a short name only; the table has the rest.
    let names: Vec<String> = nodes
        .iter()
        .map(|(node, model)| format!("{node} {}", model.split(':').next().unwrap_or(model)))
        .collect();
    let curves: Vec<[Vec<(f64, f64)>; 3]> = nodes
        .iter()
        .map(|&(node, _)| {
            let mut mine: Vec<&MetricsRow> = rows.iter().filter(|r| r.node == node).collect();
            mine.sort_by_key(|r| r.round);
            let (mut energy, mut airtime) = (0.0, 0.0);
            let mut curves = [Vec::new(), Vec::new(), Vec::new()];
            for r in mine {
                let round = f64::from(r.round);
                energy += r.tx_energy_j + r.rx_energy_j;
                airtime += r.airtime_s;
                curves[0].push((round, r.test_accuracy));
                curves[1].push((round, energy));
                curves[2].push((round, airtime));
            }
            curves
        })
        .collect();
    let series = |k: usize| -> Vec<Series> {
        curves
            .iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (c, name))| Series {
                name,
                color: PALETTE[i % PALETTE.len()],
                points: c[k].clone(),
                ..Default::default()
            })
            .collect()
    };
    let panels = [
        Panel {
            title: "test accuracy",
            x_label: "round",
            y_label: "test accuracy",
            log_x: false,
            series: series(0),
        },
        Panel {
            title: "radio energy (transmit + receive)",
            x_label: "round",
            y_label: "cumulative energy, J",
            log_x: false,
            series: series(1),
        },
        Panel {
            title: "air time",
            x_label: "round",
            y_label: "cumulative air time, s",
            log_x: false,
            series: series(2),
        },
    ];
    figure(title, &panels)
}

/// Writes `positions.svg` beside the run's `positions.jsonl` (moving devices; none
/// without one): each node's path over the rounds, on the plane.
pub fn write_positions_figure(run_dir: &Path, title: &str) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Line {
        positions: Vec<[f64; 2]>,
    }
    let path = run_dir.join("positions.jsonl");
    if !path.exists() {
        return Ok(());
    }
    // One line per closed round, one position per node.
    let text = wdml_proto::files::read_bounded_text(&path, 1 << 30)?;
    let mut paths: Vec<Vec<(f64, f64)>> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line: Line =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), number + 1))?;
        paths.resize(paths.len().max(line.positions.len()), Vec::new());
        for (node, [x, y]) in line.positions.into_iter().enumerate() {
            paths[node].push((x, y));
        }
    }
    let names: Vec<String> = (0..paths.len()).map(|node| format!("node {node}")).collect();
    let panel = Panel {
        title: "where the devices were, round by round",
        x_label: "x, m",
        y_label: "y, m",
        log_x: false,
        series: paths
            .into_iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (points, name))| Series {
                name,
                color: PALETTE[i % PALETTE.len()],
                points,
                ..Default::default()
            })
            .collect(),
    };
    wdml_proto::files::write_atomic(
        &run_dir.join("positions.svg"),
        figure(title, &[panel]).as_bytes(),
        wdml_proto::files::Mode::Public,
    )
    .map_err(|e| anyhow::anyhow!("cannot write {e}"))
}

/// Writes `split.svg` beside the run's `split.json` (none without one).
pub fn write_split_figure(run_dir: &Path) -> anyhow::Result<()> {
    let path = run_dir.join("split.json");
    if !path.exists() {
        return Ok(());
    }
    // Per node: a sample count and a histogram.
    let text = wdml_proto::files::read_bounded_text(&path, 64 << 20)?;
    let split: wdml_coordinator::SplitRecord =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let out = run_dir.join("split.svg");
    wdml_proto::files::write_atomic(&out, split_figure(&split).as_bytes(), wdml_proto::files::Mode::Public)
        .map_err(|e| anyhow::anyhow!("cannot write {e}"))
}

/// The realised split: a bar per node, its length the node's private samples, cut
/// into its classes' counts (one colour per class).
fn split_figure(split: &wdml_coordinator::SplitRecord) -> String {
    const CLASS_COLOURS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    ];
    let (left, bar, gap, top, width) = (70.0, 16.0, 6.0, 40.0, 520.0);
    let most = split.nodes.iter().map(|n| n.samples).max().unwrap_or(1).max(1) as f64;
    let height = top + (bar + gap) * split.nodes.len() as f64 + 60.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        left + width + 30.0
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="15">private samples per node and class ({})</text>"#,
        (left + width) / 2.0,
        escape(&split.partition)
    );
    for (row, node) in split.nodes.iter().enumerate() {
        let y = top + (bar + gap) * row as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">node {} ({})</text>"#,
            left - 6.0,
            y + bar - 4.0,
            node.node,
            node.samples
        );
        let mut x = left;
        for (class, &count) in node.histogram.iter().enumerate() {
            let w = width * f64::from(count) / most;
            if w > 0.0 {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{bar}" fill="{}"><title>class {class}: {count}</title></rect>"#,
                    CLASS_COLOURS[class % CLASS_COLOURS.len()]
                );
            }
            x += w;
        }
    }
    let legend_y = top + (bar + gap) * split.nodes.len() as f64 + 20.0;
    for (class, colour) in CLASS_COLOURS.iter().enumerate() {
        let x = left + 52.0 * class as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{class}</text>"#,
            legend_y - 10.0,
            x + 16.0,
            legend_y
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// 1234 → "1.23k", 0.00123 → "1.23m".
fn format_si(v: f64) -> String {
    let a = v.abs();
    let (scaled, unit) = match a {
        0.0 => (v, ""),
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        a if a >= 1.0 => (v, ""),
        a if a >= 1e-3 => (v * 1e3, "m"),
        a if a >= 1e-6 => (v * 1e6, "µ"),
        _ => (v * 1e9, "n"),
    };
    // Three decimals at most, without trailing zeros: 8.25, 1.5k, 43.626m.
    let digits = format!("{scaled:.3}");
    let digits = if digits.contains('.') {
        digits.trim_end_matches('0').trim_end_matches('.')
    } else {
        &digits
    };
    format!("{digits}{unit}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_well_formed_svg_with_every_series() {
        let panel = |log_x| Panel {
            title: "t",
            x_label: "x",
            y_label: "y",
            log_x,
            series: vec![
                Series {
                    name: "a<b",
                    color: "red",
                    points: vec![(1.0, 0.1), (10.0, 0.5)],
                    ..Default::default()
                },
                Series {
                    name: "c",
                    color: "blue",
                    points: vec![(0.0, 0.2), (100.0, 0.9)],
                    ..Default::default()
                },
            ],
        };
        let svg = figure("title", &[panel(false), panel(true)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("a&lt;b"));
        assert_eq!(format_si(0.00123), "1.23m");
        assert_eq!(format_si(2500.0), "2.5k");
        assert_eq!(format_si(30.0), "30");
    }

    #[test]
    fn a_run_figure_has_a_line_per_node_in_every_panel() {
        let row = |node: u32, round: u32, model: &str| MetricsRow {
            node,
            round,
            model: model.into(),
            test_accuracy: 0.9,
            tx_energy_j: 0.25,
            airtime_s: 0.001,
            ..MetricsRow::default()
        };
        // Out of order, as nodes report.
        let rows = [
            row(1, 1, "cnn:16,32,128"),
            row(0, 0, "mlp:64"),
            row(1, 0, "cnn:16,32,128"),
            row(0, 1, "mlp:64"),
        ];
        let svg = run_figure("run", &rows);
        assert_eq!(svg.matches("<polyline").count(), 2 * 3);
        assert!(svg.contains(">0 mlp<") && svg.contains(">1 cnn<"), "{svg}");
        // Energy accumulates: 0.25 J then 0.5 J per node, so its axis reaches 0.50
        // (accuracy's spans 0.85–0.95, air time's 0.0010–0.0020).
        assert!(svg.contains(">0.50<"), "{svg}");
    }

    #[test]
    fn a_long_legend_wraps_onto_more_rows() {
        let series = (0..12)
            .map(|_| Series {
                name: "n",
                color: "red",
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                ..Default::default()
            })
            .collect();
        let panel = Panel {
            title: "t",
            x_label: "x",
            y_label: "y",
            log_x: false,
            series,
        };
        // One panel holds three entries a row: four rows.
        let svg = figure("title", &[panel]);
        assert!(
            svg.contains(&format!(r#"height="{}""#, HEIGHT + 22.0 + 4.0 * LEGEND_ROW)),
            "{svg}"
        );
    }
}

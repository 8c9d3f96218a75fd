//! Figures for papers, drawn by plotters as SVG and PNG from one description: panels
//! side by side above a shared legend (just below the axes, so it never covers data),
//! round-number ticks (whole rounds on round axes, decades on log axes) that carry their
//! unit (`10 mJ`, `100 ms`: never a bare `10m`), and one colour per node or per
//! algorithm wherever it appears. Accuracies are drawn in percent, as every table prints
//! them. A series a log axis cannot place (zero cost) is named in a note under the
//! legend, not dropped silently.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use wdml_coordinator::{MetricsRow, metrics};

/// What an x axis holds.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Scale {
    /// Rounds: whole-number ticks only.
    Rounds,
    Linear,
    /// Costs that differ by orders of magnitude: decade ticks.
    Log,
}

/// What a tick of an axis counts: its labels carry the unit with an SI prefix
/// (`250 mJ`, `1 ms`, `10 s`), so the axis title need not (and a prefix never reads
/// as metres or minutes).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Unit {
    /// A plain number (rounds, percent, metres named in the axis title).
    None,
    Joule,
    Second,
}

impl Unit {
    fn symbol(self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::Joule => "J",
            Unit::Second => "s",
        }
    }

    /// The prefix (and its factor) for numbers as large as `v`: seconds never grow
    /// past `s` (1000 s, not 1 ks); a plain number on a linear axis keeps no prefix
    /// from 0.01 to 10,000.
    fn prefix(self, v: f64, linear: bool) -> (f64, &'static str) {
        match self {
            Unit::None if linear && (0.01..1e4).contains(&v) => (1.0, ""),
            Unit::Second if v >= 1.0 => (1.0, ""),
            _ => si_prefix(v),
        }
    }
}

/// One line of a chart (or, with `marks`, one set of points).
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    /// Points drawn as dots, not joined.
    pub marks: bool,
    /// A short label beside each point (none: no labels).
    pub labels: Vec<String>,
    pub points: Vec<(f64, f64)>,
    /// A shaded band around the line, `(x, low, high)` (none: no band): a spread.
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn line(name: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            color,
            marks: false,
            labels: Vec::new(),
            points,
            band: Vec::new(),
        }
    }
}

/// A panel: its axes and lines.
pub struct Panel {
    pub title: &'static str,
    pub x_label: &'static str,
    pub y_label: &'static str,
    pub x: Scale,
    /// What the x and y ticks count.
    pub x_unit: Unit,
    pub y_unit: Unit,
    pub series: Vec<Series>,
}

/// Panels side by side under a title, with the first panel's series as the legend
/// (every panel draws the same series).
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
}

/// Ten colours that stay apart in print and for the colour-blind (matplotlib's
/// tab10); node `i` is `PALETTE[i % 10]` in every figure and on the dashboard.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// An algorithm's colour, the same in every figure (and on the dashboard's compare
/// view): DML red, FedAvg blue, local training grey.
pub fn algorithm_color(algorithm: &str) -> RGBColor {
    match algorithm {
        "dml" => PALETTE[3],
        "fedavg" => PALETTE[0],
        "local" => PALETTE[7],
        "fedmd" => PALETTE[1],
        "dsfl" => PALETTE[2],
        _ => PALETTE[4],
    }
}

const PANEL: (u32, u32) = (440, 330);
const TITLE_HEIGHT: u32 = 30;
const LEGEND_ENTRY: u32 = 140;
const LEGEND_ROW: u32 = 20;
/// The legend's first row, this far below the panels (their x-axis titles end there).
const LEGEND_TOP: u32 = 0;
/// PNGs are drawn at twice the SVG's size: sharp in print.
const PNG_SCALE: f64 = 2.0;
const FONT: &str = "sans-serif";

/// Something drawn the same way on any plotters backend, at a scale.
trait Drawing {
    /// Size at scale 1, in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, s: f64) -> Drawn<DB>;
}

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The one font, embedded: a figure looks the same on every machine and needs none
/// installed (DejaVu Sans; its licence is beside it).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("fonts/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            unreachable!("the embedded font parses");
        }
    });
}

fn svg_of(drawing: &impl Drawing) -> anyhow::Result<String> {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, drawing.size()).into_drawing_area();
        drawing
            .draw(&root, 1.0)
            .map_err(|e| anyhow::anyhow!("drawing an SVG: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing an SVG: {e}"))?;
    }
    Ok(svg)
}

fn png_of(drawing: &impl Drawing) -> anyhow::Result<Vec<u8>> {
    register_font();
    let (w, h) = drawing.size();
    let (w, h) = ((f64::from(w) * PNG_SCALE) as u32, (f64::from(h) * PNG_SCALE) as u32);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        drawing
            .draw(&root, PNG_SCALE)
            .map_err(|e| anyhow::anyhow!("drawing a PNG: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing a PNG: {e}"))?;
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(png)
}

/// Writes `STEM.svg` and `STEM.png` into `dir`, each atomically.
fn write(drawing: &impl Drawing, dir: &Path, stem: &str) -> anyhow::Result<()> {
    for (extension, bytes) in [("svg", svg_of(drawing)?.into_bytes()), ("png", png_of(drawing)?)] {
        let path = dir.join(format!("{stem}.{extension}"));
        wdml_files::write_atomic(&path, &bytes, wdml_files::Mode::Public)
            .map_err(|e| anyhow::anyhow!("cannot write {e}"))?;
    }
    Ok(())
}

impl Figure {
    /// Writes `STEM.svg` and `STEM.png` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        write(self, dir, stem)
    }

    fn legend(&self) -> &[Series] {
        self.panels.first().map_or(&[], |p| &p.series)
    }

    fn legend_per_row(&self) -> u32 {
        ((PANEL.0 * self.panels.len() as u32).saturating_sub(20) / self.legend_entry()).max(1)
    }

    /// The width of a legend entry: room for the longest name (about 7 pixels a
    /// character at 12 px), at least `LEGEND_ENTRY`.
    fn legend_entry(&self) -> u32 {
        let longest = self.legend().iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
        (40 + 7 * longest as u32).max(LEGEND_ENTRY)
    }

    fn legend_rows(&self) -> u32 {
        (self.legend().len() as u32).div_ceil(self.legend_per_row()).max(1)
    }

    fn legend_height(&self) -> u32 {
        LEGEND_TOP + LEGEND_ROW * (self.legend_rows() + self.notes().len() as u32) + 10
    }

    /// Lines under the legend: the series a log axis leaves out because they cost
    /// nothing (local training spends no radio energy or air time), by name.
    pub fn notes(&self) -> Vec<String> {
        let mut hidden: Vec<&str> = Vec::new();
        for panel in self.panels.iter().filter(|p| p.x == Scale::Log) {
            for series in &panel.series {
                let nothing_drawn = series.points.iter().all(|&(x, _)| x.is_nan() || x <= 0.0);
                if !series.points.is_empty() && nothing_drawn && !hidden.contains(&series.name.as_str()) {
                    hidden.push(&series.name);
                }
            }
        }
        if hidden.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "{}: no radio cost (0 J, 0 s), so not drawn on the log axes",
            hidden.join(", ")
        )]
    }
}

impl Drawing for Figure {
    fn size(&self) -> (u32, u32) {
        (
            PANEL.0 * self.panels.len().max(1) as u32,
            TITLE_HEIGHT + PANEL.1 + self.legend_height(),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, s: f64) -> Drawn<DB> {
        let px = |v: u32| (f64::from(v) * s) as u32;
        root.fill(&WHITE)?;
        let (title, rest) = root.split_vertically(px(TITLE_HEIGHT));
        let (panels, legend) = rest.split_vertically(px(PANEL.1));
        let (w, _) = title.dim_in_pixel();
        title.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, px(8) as i32),
            font(16.0, s).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        for (area, panel) in panels
            .split_evenly((1, self.panels.len().max(1)))
            .iter()
            .zip(&self.panels)
        {
            draw_panel(area, panel, s)?;
        }
        let per_row = self.legend_per_row();
        let entry = self.legend_entry();
        for (i, series) in self.legend().iter().enumerate() {
            let i = i as u32;
            let x = px(20 + entry * (i % per_row)) as i32;
            let y = px(LEGEND_TOP + LEGEND_ROW * (i / per_row) + LEGEND_ROW / 2) as i32;
            if !series.band.is_empty() {
                legend.draw(&Rectangle::new(
                    [(x, y - px(6) as i32), (x + px(24) as i32, y + px(6) as i32)],
                    series.color.mix(BAND_ALPHA).filled(),
                ))?;
            }
            if series.marks {
                legend.draw(&Circle::new((x + px(12) as i32, y), px(4), series.color.filled()))?;
            } else {
                legend.draw(&PathElement::new(
                    vec![(x, y), (x + px(24) as i32, y)],
                    series.color.stroke_width(px(3)),
                ))?;
            }
            legend.draw(&Text::new(
                series.name.clone(),
                (x + px(30) as i32, y),
                font(12.0, s).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        for (k, note) in self.notes().into_iter().enumerate() {
            let row = self.legend_rows() + k as u32;
            legend.draw(&Text::new(
                note,
                (px(20) as i32, px(LEGEND_TOP + LEGEND_ROW * row + LEGEND_ROW / 2) as i32),
                font(11.0, s)
                    .color(&RGBColor(0x55, 0x55, 0x55))
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        Ok(())
    }
}

/// How opaque a spread's band is over white.
const BAND_ALPHA: f64 = 0.2;

fn font(size: f64, s: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size * s).into_font()).color(&BLACK)
}

/// Ticks for one axis: the axis spans `lo..hi`, both ticks themselves.
#[derive(Debug, PartialEq)]
struct Ticks {
    lo: f64,
    hi: f64,
    values: Vec<f64>,
    /// The distance between linear ticks (the labels' precision); 0 on a log axis.
    step: f64,
}

impl Ticks {
    /// About six ticks at 1, 2 or 5 × 10^k apart (at least 1 apart for rounds), the
    /// axis widened to the ticks around the data.
    fn linear((lo, hi): (f64, f64), whole: bool) -> Ticks {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else if whole {
            // One round: the axis around it, never below zero.
            let below = if lo >= 0.0 { (lo - 1.0).max(0.0) } else { lo - 1.0 };
            (below, lo + 1.0)
        } else {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo - pad, hi + pad)
        };
        // The 1, 2 or 5 × 10^k that cuts the span into closest to five steps.
        let decade = 10f64.powf(((hi - lo) / 5.0).log10().floor());
        let mut step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * decade)
            .min_by(|a, b| ((hi - lo) / a - 5.0).abs().total_cmp(&((hi - lo) / b - 5.0).abs()))
            .unwrap_or(decade);
        if whole {
            step = step.max(1.0).round();
        }
        let first = (lo / step).floor() as i64;
        let last = (hi / step).ceil() as i64;
        // Multiples of the step, computed as such: 0.1 * 3 prints as 0.30000000000000004.
        let values: Vec<f64> = (first..=last).map(|k| round_to(k as f64 * step, step)).collect();
        Ticks {
            lo: values[0],
            hi: values[values.len() - 1],
            values,
            step,
        }
    }

    /// Decades around the data (1, 2 and 5 within them when the data spans less than
    /// two); non-positive values cannot be drawn and are left out by the caller.
    fn log((lo, hi): (f64, f64)) -> Ticks {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo > 0.0 {
            (lo, hi)
        } else {
            (1.0, 10.0)
        };
        let first = lo.log10().floor() as i32;
        let last = (hi.log10().ceil() as i32).max(first + 1);
        let mantissas: &[f64] = if last - first < 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
        let mut values = Vec::new();
        for e in first..=last {
            for m in mantissas {
                let v = m * 10f64.powi(e);
                if e == last && *m > 1.0 {
                    break;
                }
                values.push(round_to(v, 10f64.powi(e.min(0))));
            }
        }
        Ticks {
            lo: values[0],
            hi: values[values.len() - 1],
            values,
            step: 0.0,
        }
    }

    /// A tick's label, to the step's precision, in `unit`: on a linear axis every tick
    /// with the largest tick's prefix (`0`, `50 mJ`, …, `250 mJ`; a plain number plain
    /// from 0.01 to 10,000, SI-prefixed beyond: `2m`, `15k`); on a log axis every tick
    /// with its own (`100 µJ`, `1 mJ`, `10 mJ`, `100 mJ`, `1 J`).
    fn label(&self, v: f64, unit: Unit) -> String {
        if v == 0.0 {
            return "0".into();
        }
        let (number, prefix) = if self.step > 0.0 {
            let largest = self.values.iter().fold(0f64, |m, v| m.max(v.abs()));
            let prefix = unit.prefix(largest, true);
            (fixed(v, self.step, prefix.0), prefix.1)
        } else {
            let prefix = unit.prefix(v.abs(), false);
            (fixed(v, v.abs(), prefix.0), prefix.1)
        };
        match unit {
            Unit::None => format!("{number}{prefix}"),
            _ => format!("{number} {prefix}{}", unit.symbol()),
        }
    }
}

fn round_to(v: f64, step: f64) -> f64 {
    // Steps are 1, 2 or 5 × 10^k: 10^-k (or 1) makes them whole.
    let scale = 10f64.powi((-step.log10().floor()).max(0.0) as i32);
    (v * scale).round() / scale
}

/// The SI prefix for numbers as large as `v`, and its factor.
fn si_prefix(v: f64) -> (f64, &'static str) {
    const PREFIXES: [(f64, &str); 8] = [
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
        (1.0, ""),
        (1e-3, "m"),
        (1e-6, "µ"),
        (1e-9, "n"),
        (1e-12, "p"),
    ];
    PREFIXES.iter().copied().find(|&(f, _)| v >= f).unwrap_or(PREFIXES[7])
}

/// `v` in units of a prefix's `factor`, with the decimals `step` needs.
fn fixed(v: f64, step: f64, factor: f64) -> String {
    let decimals = (-(step / factor).log10().floor()).max(0.0) as usize;
    format!("{:.*}", decimals, v / factor)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// One axis as plotters sees it: our ticks (and only those), our labels, a linear or
/// logarithmic mapping.
struct Axis {
    ticks: Ticks,
    log: bool,
    unit: Unit,
}

impl Axis {
    fn position(&self, v: f64) -> f64 {
        if self.log { v.max(f64::MIN_POSITIVE).log10() } else { v }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.position(self.ticks.lo), self.position(self.ticks.hi));
        let at = (self.position(*value) - lo) / (hi - lo);
        limit.0 + (at * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Grid lines at the labelled ticks only.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.values.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.ticks.lo..self.ticks.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        self.ticks.label(*value, self.unit)
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel, s: f64) -> Drawn<DB> {
    let px = |v: f64| (v * s) as u32;
    let log = panel.x == Scale::Log;
    // A log axis cannot place zero or less; such points are left out.
    let drawable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log || x > 0.0);
    let points = || {
        panel
            .series
            .iter()
            .flat_map(|series| series.points.iter().copied())
            .filter(drawable)
    };
    let bands = || {
        panel
            .series
            .iter()
            .flat_map(|series| series.band.iter().copied())
            .filter(|&(x, lo, hi)| drawable(&(x, lo)) && drawable(&(x, hi)))
            .flat_map(|(_, lo, hi)| [lo, hi])
    };
    let y = Axis {
        ticks: Ticks::linear(bounds(points().map(|p| p.1).chain(bands())), false),
        log: false,
        unit: panel.y_unit,
    };
    let xs = bounds(points().map(|p| p.0));
    let x = Axis {
        ticks: if log {
            Ticks::log(xs)
        } else {
            Ticks::linear(xs, panel.x == Scale::Rounds)
        },
        log,
        unit: panel.x_unit,
    };
    // Where a point sits across the axis, 0 to 1: a point's label goes to its right,
    // or to its left in the right third, so that it stays inside the panel.
    let across = {
        let (lo, hi) = (x.position(x.ticks.lo), x.position(x.ticks.hi));
        let position = |v: f64| if log { v.max(f64::MIN_POSITIVE).log10() } else { v };
        move |v: f64| (position(v) - lo) / (hi - lo)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, font(13.0, s))
        .margin_left(px(8.0))
        .margin_right(px(26.0))
        .margin_top(px(4.0))
        .x_label_area_size(px(36.0))
        .y_label_area_size(px(56.0))
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label)
        .y_desc(panel.y_label)
        .label_style(font(11.0, s))
        .axis_desc_style(font(12.0, s))
        .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4).stroke_width(px(1.0).max(1)))
        .axis_style(BLACK.stroke_width(px(1.0).max(1)))
        .draw()?;
    // Bands first: every line stays on top of every band.
    for series in panel.series.iter().filter(|s| !s.band.is_empty()) {
        let band: Vec<(f64, f64, f64)> = series
            .band
            .iter()
            .copied()
            .filter(|&(x, lo, hi)| drawable(&(x, lo)) && drawable(&(x, hi)))
            .collect();
        let outline: Vec<(f64, f64)> = band
            .iter()
            .map(|&(x, _, hi)| (x, hi))
            .chain(band.iter().rev().map(|&(x, lo, _)| (x, lo)))
            .collect();
        chart.draw_series([Polygon::new(outline, series.color.mix(BAND_ALPHA).filled())])?;
    }
    for series in &panel.series {
        let points: Vec<(f64, f64)> = series.points.iter().copied().filter(drawable).collect();
        if series.marks {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, px(3.5), series.color.filled())))?;
            let labelled = series.points.iter().zip(&series.labels).filter(|(p, _)| drawable(p));
            chart.draw_series(labelled.map(|(&p, label)| {
                let (dx, anchor) = if across(p.0) > 2.0 / 3.0 {
                    (-(px(5.0) as i32), HPos::Right)
                } else {
                    (px(5.0) as i32, HPos::Left)
                };
                EmptyElement::at(p)
                    + Text::new(
                        label.clone(),
                        (dx, 0),
                        font(9.0, s).color(&series.color).pos(Pos::new(anchor, VPos::Center)),
                    )
            }))?;
        } else {
            chart.draw_series(LineSeries::new(points, series.color.stroke_width(px(2.0))))?;
        }
    }
    Ok(())
}

/// A run at a glance, written beside `metrics.jsonl` as `rounds.svg` and `rounds.png`:
/// per node, test accuracy, cumulative radio energy and cumulative air time against
/// rounds.
pub fn write_run_figure(run_dir: &Path, title: &str) -> anyhow::Result<()> {
    let rows = MetricsRow::read_all(run_dir)?;
    run_figure(title, &rows).write(run_dir, "rounds")
}

/// "3 cnn" per node, in node order: the legend has room for a short name only.
fn node_names(rows: &[MetricsRow]) -> Vec<(u32, String)> {
    let mut nodes: Vec<(u32, &str)> = rows.iter().map(|r| (r.node, r.model.as_str())).collect();
    nodes.sort_unstable();
    nodes.dedup_by_key(|(node, _)| *node);
    nodes
        .into_iter()
        .map(|(node, model)| (node, format!("{node} {}", model.split(':').next().unwrap_or(model))))
        .collect()
}

fn run_figure(title: &str, rows: &[MetricsRow]) -> Figure {
    let names = node_names(rows);
    let curves: Vec<[Vec<(f64, f64)>; 3]> = names
        .iter()
        .map(|&(node, _)| {
            let mut mine: Vec<&MetricsRow> = rows.iter().filter(|r| r.node == node).collect();
            mine.sort_by_key(|r| r.round);
            // Summed as the dashboard and Prometheus sum them (wdml_coordinator::metrics).
            let mut totals = metrics::Totals::default();
            let mut curves = [Vec::new(), Vec::new(), Vec::new()];
            for r in mine {
                let round = f64::from(r.round);
                totals.add(r);
                curves[0].push((round, 100.0 * r.metrics.test_accuracy));
                curves[1].push((round, totals.get("radio_energy_j")));
                curves[2].push((round, totals.get("airtime_s")));
            }
            curves
        })
        .collect();
    let series = |k: usize| -> Vec<Series> {
        names
            .iter()
            .zip(&curves)
            .map(|((node, name), c)| Series::line(name, PALETTE[*node as usize % PALETTE.len()], c[k].clone()))
            .collect()
    };
    let panel = |title, y_label, y_unit, k| Panel {
        title,
        x_label: "round",
        y_label,
        x: Scale::Rounds,
        x_unit: Unit::None,
        y_unit,
        series: series(k),
    };
    Figure {
        title: title.to_string(),
        panels: vec![
            panel("test accuracy", "test accuracy, %", Unit::None, 0),
            panel("radio energy (transmit + receive)", "cumulative energy", Unit::Joule, 1),
            panel("air time", "cumulative air time", Unit::Second, 2),
        ],
    }
}

/// Writes `positions.svg` and `.png` beside the run's `positions.jsonl` (moving
/// devices; none without one): each node's path over the rounds, on the plane.
pub fn write_positions_figure(run_dir: &Path, title: &str) -> anyhow::Result<()> {
    let path = run_dir.join("positions.jsonl");
    if !path.exists() {
        return Ok(());
    }
    let paths = read_paths(&path)?;
    let panel = Panel {
        title: "where the devices were, round by round",
        x_label: "x, m",
        y_label: "y, m",
        x: Scale::Linear,
        x_unit: Unit::None,
        y_unit: Unit::None,
        series: paths
            .into_iter()
            .enumerate()
            .map(|(i, points)| Series::line(format!("node {i}"), PALETTE[i % PALETTE.len()], points))
            .collect(),
    };
    Figure {
        title: title.to_string(),
        panels: vec![panel],
    }
    .write(run_dir, "positions")
}

/// Per node, its positions over the rounds, from `positions.jsonl`.
fn read_paths(path: &Path) -> anyhow::Result<Vec<Vec<(f64, f64)>>> {
    #[derive(serde::Deserialize)]
    struct Line {
        positions: Vec<[f64; 2]>,
    }
    // One line per closed round, one position per node.
    let text = wdml_files::read_bounded_text(path, 1 << 30)?;
    let mut paths: Vec<Vec<(f64, f64)>> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line: Line =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), number + 1))?;
        paths.resize(paths.len().max(line.positions.len()), Vec::new());
        for (node, [x, y]) in line.positions.into_iter().enumerate() {
            paths[node].push((x, y));
        }
    }
    Ok(paths)
}

/// Writes `split.svg` and `.png` beside the run's `split.json` (none without one).
pub fn write_split_figure(run_dir: &Path) -> anyhow::Result<()> {
    let path = run_dir.join("split.json");
    if !path.exists() {
        return Ok(());
    }
    // Per node: a sample count and a histogram.
    let text = wdml_files::read_bounded_text(&path, 64 << 20)?;
    let split: wdml_coordinator::SplitRecord =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    write(&SplitFigure(&split), run_dir, "split")
}

/// The realised split: a bar per node, its length the node's private samples, cut
/// into its classes' counts (class `c` in `PALETTE[c]`).
struct SplitFigure<'a>(&'a wdml_coordinator::SplitRecord);

impl SplitFigure<'_> {
    const BAR: u32 = 20;
}

impl Drawing for SplitFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (
            640,
            TITLE_HEIGHT + 70 + Self::BAR * self.0.nodes.len().max(1) as u32 + 40,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, s: f64) -> Drawn<DB> {
        let px = |v: u32| (f64::from(v) * s) as u32;
        let split = self.0;
        root.fill(&WHITE)?;
        let (_, h) = root.dim_in_pixel();
        let (chart_area, legend) = root.split_vertically(h - px(40));
        let most = split.nodes.iter().map(|n| n.samples).max().unwrap_or(1).max(1);
        let x = Axis {
            ticks: Ticks::linear((0.0, most as f64), true),
            log: false,
            unit: Unit::None,
        };
        let rows = split.nodes.len().max(1) as f64;
        let y = Axis {
            ticks: Ticks {
                lo: 0.0,
                hi: rows,
                values: Vec::new(),
                step: 1.0,
            },
            log: false,
            unit: Unit::None,
        };
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                format!("private samples per node and class ({})", split.partition),
                font(15.0, s),
            )
            .margin(px(8))
            .margin_right(px(24))
            .x_label_area_size(px(40))
            .y_label_area_size(px(90))
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc("private samples")
            .label_style(font(11.0, s))
            .axis_desc_style(font(12.0, s))
            .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4).stroke_width(1))
            .draw()?;
        for (row, node) in split.nodes.iter().enumerate() {
            // Node 0 on top.
            let top = rows - row as f64 - 0.1;
            let bottom = rows - row as f64 - 0.9;
            let mut left = 0.0;
            for (class, &count) in node.histogram.iter().enumerate() {
                let right = left + f64::from(count);
                if count > 0 {
                    chart.draw_series([Rectangle::new(
                        [(left, bottom), (right, top)],
                        PALETTE[class % PALETTE.len()].filled(),
                    )])?;
                }
                left = right;
            }
            chart.draw_series([EmptyElement::at((0.0, (top + bottom) / 2.0))
                + Text::new(
                    format!("node {} ({})", node.node, node.samples),
                    (-(px(6) as i32), 0),
                    font(11.0, s).pos(Pos::new(HPos::Right, VPos::Center)),
                )])?;
        }
        for class in 0..10u32 {
            let x0 = px(90 + 52 * class) as i32;
            let y0 = px(14) as i32;
            legend.draw(&Rectangle::new(
                [(x0, y0 - px(6) as i32), (x0 + px(12) as i32, y0 + px(6) as i32)],
                PALETTE[class as usize].filled(),
            ))?;
            legend.draw(&Text::new(
                format!("class {class}"),
                (x0 + px(15) as i32, y0),
                font(10.0, s).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Every text of an SVG, in document order.
    pub fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim().to_string()))
            .collect()
    }

    /// The texts that are tick labels: numbers, with an SI prefix or none, and a unit
    /// (`250 mJ`, `1 s`) or none.
    pub fn tick_labels(svg: &str) -> Vec<f64> {
        texts(svg)
            .iter()
            .filter_map(|t| {
                let t = match t.split_once(' ') {
                    Some((number, unit)) => {
                        let prefix = unit.strip_suffix('J').or_else(|| unit.strip_suffix('s'))?;
                        if prefix.chars().count() > 1 {
                            return None;
                        }
                        format!("{number}{prefix}")
                    }
                    None => t.clone(),
                };
                let (number, factor) = match t.char_indices().last()? {
                    (i, 'k') => (&t[..i], 1e3),
                    (i, 'M') => (&t[..i], 1e6),
                    (i, 'm') => (&t[..i], 1e-3),
                    (i, 'µ') => (&t[..i], 1e-6),
                    (i, 'n') => (&t[..i], 1e-9),
                    _ => (&t[..], 1.0),
                };
                number.parse::<f64>().ok().map(|v| v * factor)
            })
            .collect()
    }

    /// A round number: three significant digits at most (0.25, 1.5k, 0.52 pass;
    /// 43.626m does not). Rounds axes are checked for whole numbers apart.
    pub fn is_round(v: f64) -> bool {
        // `{:e}` is the shortest form that reads back as `v`.
        let text = format!("{v:e}");
        let mantissa = text.split('e').next().unwrap_or_default();
        mantissa.chars().filter(char::is_ascii_digit).count() <= 3
    }

    fn row(node: u32, round: u32, model: &str) -> MetricsRow {
        MetricsRow {
            node,
            round,
            model: model.into(),
            metrics: wdml_proto::RoundMetrics {
                test_accuracy: 0.5 + 0.013 * f64::from(round) + 0.01 * f64::from(node),
                tx_energy_j: 0.043_626,
                airtime_s: 0.001_37,
                ..Default::default()
            },
            ..MetricsRow::default()
        }
    }

    #[test]
    fn ticks_are_round_numbers_on_every_axis_kind() {
        // Rounds: whole numbers, even on a short run.
        for (lo, hi) in [(0.0, 2.0), (0.0, 29.0), (3.0, 3.0), (0.0, 0.0), (0.0, 333.0)] {
            let t = Ticks::linear((lo, hi), true);
            assert!(t.values.iter().all(|v| v.fract() == 0.0), "{lo}..{hi}: {t:?}");
            assert!(t.lo <= lo && t.hi >= hi && t.values.len() >= 2, "{t:?}");
        }
        assert_eq!(
            Ticks::linear((0.0, 29.0), true).values,
            [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
        );
        // Linear: multiples of 1, 2 or 5 × 10^k, labelled to the step's precision.
        let t = Ticks::linear((0.0436, 1.3), false);
        assert_eq!(t.values, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]);
        assert_eq!(t.label(0.2, Unit::None), "0.2");
        let t = Ticks::linear((0.0, 0.043626), false);
        assert_eq!(t.values, [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]);
        assert_eq!(t.label(0.03, Unit::None), "0.03");
        assert_eq!(Ticks::linear((0.0, 0.0043), false).label(0.004, Unit::None), "4m");
        assert_eq!(
            Ticks::linear((1000.0, 26000.0), false).label(15000.0, Unit::None),
            "15k"
        );
        // Log: decades, and 1-2-5 within a span of less than two.
        assert_eq!(Ticks::log((0.003, 47.0)).values, [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]);
        let t = Ticks::log((2.3, 7.8));
        assert_eq!(t.values, [1.0, 2.0, 5.0, 10.0]);
        assert_eq!(t.label(2.0, Unit::None), "2");
        let t = Ticks::log((0.0003, 2.0));
        let labels = |unit| -> Vec<String> { t.values.iter().map(|&v| t.label(v, unit)).collect() };
        assert_eq!(labels(Unit::None), ["100µ", "1m", "10m", "100m", "1", "10"]);
        for t in [Ticks::log((0.003, 47.0)), Ticks::linear((0.0436, 1.3), false)] {
            assert!(t.values.iter().all(|&v| is_round(v)), "{t:?}");
        }
        assert!(!is_round(8.125) && !is_round(0.043626) && is_round(0.25) && is_round(1500.0));
    }

    #[test]
    fn joules_and_seconds_ticks_carry_their_unit_never_a_bare_prefix() {
        // Log axes: each decade with its own prefix and the unit (before: 100µ 1m 10m
        // 100m 1 10, read as metres).
        let t = Ticks::log((0.0003, 2.0));
        let labels = |unit| -> Vec<String> { t.values.iter().map(|&v| t.label(v, unit)).collect() };
        assert_eq!(
            labels(Unit::Joule),
            ["100 µJ", "1 mJ", "10 mJ", "100 mJ", "1 J", "10 J"]
        );
        assert_eq!(
            labels(Unit::Second),
            ["100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s"]
        );
        // Seconds stay seconds (1000 s, not 1 ks, never minutes); joules go on to kJ.
        let t = Ticks::log((2.0, 3000.0));
        assert_eq!(t.label(1000.0, Unit::Second), "1000 s");
        assert_eq!(t.label(1000.0, Unit::Joule), "1 kJ");
        // Linear: the largest tick's prefix on every tick.
        let t = Ticks::linear((0.0, 0.218), false);
        let labels: Vec<String> = t.values.iter().map(|&v| t.label(v, Unit::Joule)).collect();
        assert_eq!(labels, ["0", "50 mJ", "100 mJ", "150 mJ", "200 mJ", "250 mJ"]);
        let t = Ticks::linear((0.0, 2.6), false);
        assert_eq!(t.label(2.5, Unit::Second), "2.5 s");
        // The test's own reader reads them back.
        let read = tick_labels("<text>250 mJ</text><text>1 s</text><text>100 µs</text><text>0 mlp</text>");
        assert_eq!(read.len(), 3, "{read:?}");
        for (got, want) in read.iter().zip([0.25, 1.0, 1e-4]) {
            assert!((got / want - 1.0).abs() < 1e-9, "{read:?}");
        }
    }

    #[test]
    fn a_run_figure_draws_every_node_in_every_panel_with_round_ticks() {
        // Out of order, as nodes report; five rounds of three nodes.
        let mut rows: Vec<MetricsRow> = (0..5)
            .rev()
            .flat_map(|r| (0..3).map(move |n| (n, r)))
            .map(|(n, r)| row(n, r, if n == 1 { "cnn:16,32,128" } else { "mlp:64" }))
            .collect();
        rows.swap(0, 7);
        let figure = run_figure("run", &rows);
        let svg = svg_of(&figure).unwrap();
        // A line per node and panel, each through the node's five rounds, in its colour
        // (width 2; the legend's are 3, the axes' 1).
        let lines = || {
            svg.split("<polyline")
                .skip(1)
                .map(|l| l.split("/>").next().unwrap())
                .filter(|l| l.contains(r#"stroke-width="2""#))
        };
        assert_eq!(lines().count(), 3 * 3, "{svg}");
        for (node, colour) in PALETTE.iter().enumerate().take(3) {
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", colour.0, colour.1, colour.2);
            let lines: Vec<&str> = lines().filter(|l| l.contains(&stroke)).collect();
            assert_eq!(lines.len(), 3, "node {node}");
            for line in lines {
                let points = line.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
                assert_eq!(points.split_whitespace().count(), 5, "node {node}: {points}");
            }
        }
        let texts = texts(&svg);
        assert!(
            texts.iter().any(|t| t == "0 mlp") && texts.iter().any(|t| t == "1 cnn"),
            "{texts:?}"
        );
        // Round numbers only: 43.626 mJ per round accumulate to 218 mJ, drawn on
        // ticks 0, 50 mJ, …, 250 mJ; rounds 0–4 on whole ticks; accuracy in percent
        // (50 % to 57 %: ticks 50 … 58, not 0.5 … 0.58).
        let ticks = tick_labels(&svg);
        assert!(ticks.len() > 15, "{texts:?}");
        assert!(ticks.iter().all(|&v| is_round(v)), "{texts:?}");
        assert!(
            texts.iter().any(|t| t == "250 mJ") && texts.iter().any(|t| t == "4"),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t == "test accuracy, %"), "{texts:?}");
        assert!(
            texts.iter().any(|t| t == "56") && !texts.iter().any(|t| t == "0.56"),
            "{texts:?}"
        );
        assert!(
            !texts.iter().any(|t| t.contains('.') && t.ends_with('m') && t.len() > 5),
            "{texts:?}"
        );
        // The PNG is a PNG, at twice the size.
        let png = png_of(&figure).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let (w, h) = figure.size();
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 2 * w);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 2 * h);
    }

    #[test]
    fn the_legend_sits_below_the_axes_and_wraps() {
        let figure = Figure {
            title: "t".into(),
            panels: vec![Panel {
                title: "p",
                x_label: "x",
                y_label: "y",
                x: Scale::Log,
                x_unit: Unit::Joule,
                y_unit: Unit::None,
                series: (0..12)
                    .map(|i| Series::line(format!("series {i}"), PALETTE[0], vec![(0.5, 1.0), (40.0, 2.0)]))
                    .collect(),
            }],
        };
        // One panel holds three entries a row: four rows.
        assert_eq!(
            figure.size().1,
            TITLE_HEIGHT + PANEL.1 + LEGEND_TOP + 4 * LEGEND_ROW + 10
        );
        let svg = svg_of(&figure).unwrap();
        // Every legend entry's text is below the panel.
        let below = text_ys(&svg, |t| t.starts_with("series "))
            .into_iter()
            .all(|y| y > f64::from(TITLE_HEIGHT + PANEL.1));
        assert!(below, "{svg}");
        assert!(tick_labels(&svg).iter().all(|&v| is_round(v)));
        // …and close under it: the first row within a row's height of the panel's
        // bottom edge (the x-axis title).
        let first = text_ys(&svg, |t| t == "series 0")[0];
        assert!(first < f64::from(TITLE_HEIGHT + PANEL.1 + LEGEND_ROW), "{first}");
    }

    /// The y of each text whose content passes `wanted`, in document order.
    fn text_ys(svg: &str, wanted: impl Fn(&str) -> bool) -> Vec<f64> {
        svg.split("<text")
            .skip(1)
            .filter(|t| {
                let content = t.find('>').zip(t.find("</text>")).map(|(a, b)| t[a + 1..b].trim());
                content.is_some_and(&wanted)
            })
            .map(|t| {
                t.split("y=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_series_a_log_axis_cannot_place_is_named_in_a_note_and_a_band_is_drawn() {
        let panel = |x, series| Panel {
            title: "p",
            x_label: "x",
            y_label: "y",
            x,
            x_unit: Unit::Joule,
            y_unit: Unit::None,
            series,
        };
        let curves = || {
            vec![
                Series::line("local", PALETTE[7], vec![(0.0, 50.0), (0.0, 60.0)]),
                Series {
                    band: vec![(0.01, 55.0, 65.0), (0.1, 62.0, 70.0)],
                    ..Series::line("dml", PALETTE[3], vec![(0.01, 60.0), (0.1, 66.0)])
                },
            ]
        };
        let figure = Figure {
            title: "t".into(),
            panels: vec![panel(Scale::Linear, curves()), panel(Scale::Log, curves())],
        };
        assert_eq!(
            figure.notes(),
            ["local: no radio cost (0 J, 0 s), so not drawn on the log axes"]
        );
        let svg = svg_of(&figure).unwrap();
        let note = text_ys(&svg, |t| t.ends_with("so not drawn on the log axes"));
        assert_eq!(note.len(), 1, "{svg}");
        assert!(
            note[0] > text_ys(&svg, |t| t == "local")[0],
            "the note is under the legend"
        );
        assert!(note[0] < f64::from(figure.size().1), "and inside the figure");
        // The band: a filled polygon per panel, its y axis widened to hold it (70).
        assert_eq!(svg.matches("<polygon").count(), 2, "{svg}");
        assert!(texts(&svg).iter().any(|t| t == "70"), "{svg}");
        // Nothing to hide: no note.
        let figure = Figure {
            title: "t".into(),
            panels: vec![panel(Scale::Linear, curves())],
        };
        assert!(figure.notes().is_empty());
    }
}

//! `wdml compare --seeds`: the comparison over seeds a reviewer accepts. Every figure is
//! the mean over the seeds with its 95 % Student-t interval, and every two algorithms
//! are compared by their paired difference (the same seed gives both the same split,
//! initialisation, placement and fading), tagged "within noise" where its interval
//! covers zero. `seeds.md`, `seeds.json` (the same numbers, and every seed's outcome),
//! the terminal's table and `seeds.svg` (the mean per round in its interval, and the
//! paired difference to the first algorithm in its own) all say the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{Interval, t975};
use super::{Basis, Outcome, SeedOutcome};
use crate::cli::plot::{Figure, Panel, Scale, Series, Unit, algorithm_color};
use crate::scenario::Scenario;

/// A figure of one seed's outcome.
type Field = fn(&Outcome) -> f64;

/// What an algorithm's seeds are summarised by, in the order the tables show them.
const MEASURES: [(&str, Field); 4] = [
    ("final mean acc", |o| o.final_mean_accuracy),
    ("weighted by samples", |o| o.weighted_final_accuracy),
    ("worst node", |o| o.worst_node_final_accuracy),
    ("test acc at the selected round", |o| o.selected.test_accuracy),
];

/// One algorithm over the seeds: each of [`MEASURES`], a fraction.
#[derive(Debug, Serialize)]
pub struct Across {
    pub algorithm: String,
    pub final_mean_accuracy: Interval,
    pub weighted_final_accuracy: Interval,
    pub worst_node_final_accuracy: Interval,
    pub selected_test_accuracy: Interval,
    /// The round selected in each seed.
    pub selected_rounds: Vec<u32>,
}

/// `b − a`, paired by seed, for each of [`MEASURES`].
#[derive(Debug, Serialize)]
pub struct Difference {
    pub a: String,
    pub b: String,
    pub final_mean_accuracy: Interval,
    pub weighted_final_accuracy: Interval,
    pub worst_node_final_accuracy: Interval,
    pub selected_test_accuracy: Interval,
}

/// `seeds.json`.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// What the selected rounds were chosen on.
    pub basis: Basis,
    pub interval: &'static str,
    pub algorithms: Vec<Across>,
    /// Every two algorithms, the later in the run's order minus the earlier.
    pub differences: Vec<Difference>,
    pub seeds: &'a [SeedOutcome],
}

/// `field` of algorithm `i` in each seed.
fn values(per_seed: &[SeedOutcome], i: usize, field: Field) -> Vec<f64> {
    per_seed.iter().map(|s| field(&s.outcomes[i])).collect()
}

impl<'a> Summary<'a> {
    /// `per_seed`: one comparison per seed, each of the same algorithms in one order.
    pub fn of(per_seed: &'a [SeedOutcome]) -> Summary<'a> {
        let first = per_seed.first().map_or(&[][..], |s| &s.outcomes[..]);
        let [final_mean, weighted, worst, selected] = MEASURES.map(|(_, f)| f);
        let algorithms = first
            .iter()
            .enumerate()
            .map(|(i, o)| Across {
                algorithm: o.algorithm.clone(),
                final_mean_accuracy: Interval::of(&values(per_seed, i, final_mean)),
                weighted_final_accuracy: Interval::of(&values(per_seed, i, weighted)),
                worst_node_final_accuracy: Interval::of(&values(per_seed, i, worst)),
                selected_test_accuracy: Interval::of(&values(per_seed, i, selected)),
                selected_rounds: per_seed.iter().map(|s| s.outcomes[i].selected.round).collect(),
            })
            .collect();
        let mut differences = Vec::new();
        for j in 0..first.len() {
            for i in 0..j {
                let paired = |f| Interval::paired(&values(per_seed, i, f), &values(per_seed, j, f));
                differences.push(Difference {
                    a: first[i].algorithm.clone(),
                    b: first[j].algorithm.clone(),
                    final_mean_accuracy: paired(final_mean),
                    weighted_final_accuracy: paired(weighted),
                    worst_node_final_accuracy: paired(worst),
                    selected_test_accuracy: paired(selected),
                });
            }
        }
        Summary {
            basis: first.first().map_or(Basis::Test, |o| o.selected.basis),
            interval: "95 % Student-t: mean ± t(0.975, n − 1) · sd / √n over the n seeds; differences paired by seed",
            algorithms,
            differences,
            seeds: per_seed,
        }
    }

    fn n(&self) -> usize {
        self.seeds.len()
    }
}

impl Across {
    fn measures(&self) -> [&Interval; 4] {
        [
            &self.final_mean_accuracy,
            &self.weighted_final_accuracy,
            &self.worst_node_final_accuracy,
            &self.selected_test_accuracy,
        ]
    }
}

impl Difference {
    fn measures(&self) -> [&Interval; 4] {
        [
            &self.final_mean_accuracy,
            &self.weighted_final_accuracy,
            &self.worst_node_final_accuracy,
            &self.selected_test_accuracy,
        ]
    }
}

/// A difference in points, tagged where it is within noise.
fn difference(d: &Interval) -> String {
    let shown = d.show(100.0, true);
    if d.covers_zero() {
        format!("{shown}, within noise")
    } else {
        shown
    }
}

/// `seeds.md`.
pub fn report(scenario: &Scenario, per_seed: &[SeedOutcome], summary: &Summary) -> String {
    let mut md = String::new();
    let n = summary.n();
    let _ = writeln!(md, "# Comparison across seeds: {}\n", scenario.run.name);
    let _ = writeln!(
        md,
        "{}; seeds {}. Each seed draws its own split, initialisation, placement and fading; \
         `seed-<s>/comparison.md` has each seed's full table.\n",
        super::setup(scenario),
        per_seed
            .iter()
            .map(|s| s.seed.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let _ = writeln!(
        md,
        "Every figure is the mean over the {n} seeds and its 95 % t-interval in brackets \
         (mean ± t · sd / √n, t = {}){}. Accuracy is the mean over the nodes, each counting once; \
         \"weighted\" weighs each node by its private samples. {}\n",
        if n > 1 {
            format!("{:.3}", t975(n - 1))
        } else {
            "–".into()
        },
        if n > 1 { "" } else { "; one seed has no interval" },
        match summary.basis {
            Basis::Validation =>
                "The selected round is each run's best on the validation set (data.validation); \
                                  its test accuracy is an estimate that choice did not see.",
            Basis::Test =>
                "No validation set (data.validation = 0): the selected round is the best on the test \
                            set itself, so its accuracy is optimistic.",
        },
    );
    let names: Vec<&str> = MEASURES.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(md, "| algorithm | {} | selected rounds |", names.join(" | "));
    let _ = writeln!(md, "|---|{}---|", "---:|".repeat(names.len()));
    for a in &summary.algorithms {
        let cells: Vec<String> = a
            .measures()
            .iter()
            .map(|i| format!("{} %", i.show(100.0, false)))
            .collect();
        let rounds: Vec<String> = a.selected_rounds.iter().map(u32::to_string).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            a.algorithm,
            cells.join(" | "),
            rounds.join(", ")
        );
    }
    if !summary.differences.is_empty() {
        let _ = writeln!(
            md,
            "\nPaired differences in points (the same seeds), \"within noise\" where the interval covers zero:\n"
        );
        let _ = writeln!(md, "| difference | {} |", names.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(names.len()));
        for d in &summary.differences {
            let cells: Vec<String> = d.measures().iter().map(|i| difference(i)).collect();
            let _ = writeln!(md, "| {} − {} | {} |", d.b, d.a, cells.join(" | "));
        }
    }
    let _ = writeln!(md, "\nEach seed:\n");
    let _ = write!(md, "| seed |");
    for a in &summary.algorithms {
        let _ = write!(md, " {0}: mean acc | {0}: worst node |", a.algorithm);
    }
    let _ = writeln!(md, "\n|---|{}", "---:|---:|".repeat(summary.algorithms.len()));
    for s in per_seed {
        let _ = write!(md, "| {} |", s.seed);
        for o in &s.outcomes {
            let _ = write!(
                md,
                " {:.2} % | {:.2} % |",
                100.0 * o.final_mean_accuracy,
                100.0 * o.worst_node_final_accuracy
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "\n![mean accuracy per round over the seeds with its 95 % interval, and the paired differences](seeds.svg)"
    );
    md
}

/// The comparison across seeds for a terminal, within 80 columns.
pub fn terminal(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<9} {:>25} {:>25}", "algorithm", "final mean acc", "worst node");
    for a in &summary.algorithms {
        let _ = writeln!(
            out,
            "{:<9} {:>25} {:>25}",
            a.algorithm,
            format!("{} %", a.final_mean_accuracy.show(100.0, false)),
            format!("{} %", a.worst_node_final_accuracy.show(100.0, false)),
        );
    }
    for d in &summary.differences {
        let _ = writeln!(out, "{} − {}: {} points", d.b, d.a, difference(&d.final_mean_accuracy));
    }
    let _ = writeln!(
        out,
        "(mean over {} seeds [95 % t-interval]; final mean's differences paired by seed)",
        summary.n()
    );
    out
}

/// A curve over seeds: per round every seed closed, the interval of the values there.
type Curve = (String, Vec<(f64, Interval)>);

/// Per algorithm (in the order they ran): each round's values over the seeds, in
/// percent, for the rounds every seed closed.
fn per_round(per_seed: &[SeedOutcome]) -> Vec<(String, BTreeMap<u32, Vec<f64>>)> {
    let algorithms = per_seed.first().map_or(0, |s| s.outcomes.len());
    (0..algorithms)
        .map(|i| {
            let mut rounds: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for s in per_seed {
                for p in &s.outcomes[i].curve {
                    rounds.entry(p.round).or_default().push(100.0 * p.mean_accuracy);
                }
            }
            rounds.retain(|_, values| values.len() == per_seed.len());
            (per_seed[0].outcomes[i].algorithm.clone(), rounds)
        })
        .collect()
}

/// Each algorithm's mean test accuracy per round, in percent, with its interval.
fn curves(per_seed: &[SeedOutcome]) -> Vec<Curve> {
    per_round(per_seed)
        .into_iter()
        .map(|(a, rounds)| {
            let points = rounds.iter().map(|(&r, v)| (f64::from(r), Interval::of(v))).collect();
            (a, points)
        })
        .collect()
}

/// Each algorithm after the first, minus the first, per round, paired by seed.
fn differences(per_seed: &[SeedOutcome]) -> Vec<Curve> {
    let mut all = per_round(per_seed).into_iter();
    let Some((_, first)) = all.next() else {
        return Vec::new();
    };
    all.map(|(a, rounds)| {
        let points = rounds
            .iter()
            .filter_map(|(r, v)| Some((f64::from(*r), Interval::paired(first.get(r)?, v))))
            .collect();
        (a, points)
    })
    .collect()
}

fn series((algorithm, points): Curve) -> Series {
    Series {
        band: points
            .iter()
            .map(|(r, i)| (*r, i.low.unwrap_or(i.mean), i.high.unwrap_or(i.mean)))
            .collect(),
        ..Series::line(
            algorithm.clone(),
            algorithm_color(&algorithm),
            points.iter().map(|(r, i)| (*r, i.mean)).collect(),
        )
    }
}

/// `seeds.svg`: each algorithm's mean accuracy over the seeds per round, in its 95 %
/// t-interval; beside it, each other algorithm's paired difference to the first one.
pub fn plot(scenario: &Scenario, per_seed: &[SeedOutcome]) -> Figure {
    let seeds: Vec<String> = per_seed.iter().map(|s| s.seed.to_string()).collect();
    let mut panels = vec![Panel {
        title: "mean over the seeds; band: its 95 % t-interval",
        x_label: "round",
        y_label: "mean test accuracy, %",
        x: Scale::Rounds,
        x_unit: Unit::None,
        y_unit: Unit::None,
        series: curves(per_seed).into_iter().map(series).collect(),
    }];
    let differences = differences(per_seed);
    if !differences.is_empty() {
        panels.push(Panel {
            title: "minus the first algorithm, paired by seed; band: 95 % t-interval",
            x_label: "round",
            y_label: "difference in mean test accuracy, points",
            x: Scale::Rounds,
            x_unit: Unit::None,
            y_unit: Unit::None,
            series: differences.into_iter().map(series).collect(),
        });
    }
    Figure {
        title: format!("{}: {} seeds ({})", scenario.run.name, seeds.len(), seeds.join(", ")),
        panels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::compare::tests::outcome_with;

    /// Three seeds of local and dml, dml 20 points ahead give or take a point.
    fn three_seeds() -> Vec<SeedOutcome> {
        [
            (4, [0.5, 0.7, 0.8], 0.6),
            (5, [0.6, 0.7, 0.79], 0.58),
            (6, [0.4, 0.7, 0.81], 0.62),
        ]
        .into_iter()
        .map(|(seed, dml, local)| SeedOutcome {
            seed,
            outcomes: vec![
                outcome_with("local", &[0.5, local, local], None),
                outcome_with("dml", &dml, None),
            ],
        })
        .collect()
    }

    #[test]
    fn the_summary_gives_intervals_and_paired_differences_tagged_by_noise() {
        let per_seed = three_seeds();
        let summary = Summary::of(&per_seed);
        let dml = &summary.algorithms[1];
        assert_eq!(dml.algorithm, "dml");
        assert!((dml.final_mean_accuracy.mean - 0.8).abs() < 1e-12);
        // sd 0.01 over 3 seeds: half-width t(0.975, 2) · 0.01 / √3.
        let half = 4.3027 * 0.01 / 3f64.sqrt();
        assert!((dml.final_mean_accuracy.high.unwrap() - (0.8 + half)).abs() < 1e-9);
        assert_eq!(dml.selected_rounds, [3, 3, 3], "chosen on the test set: no validation");
        assert_eq!(summary.basis, Basis::Test);
        let d = &summary.differences[0];
        assert_eq!((d.a.as_str(), d.b.as_str()), ("local", "dml"));
        assert!((d.final_mean_accuracy.mean - 0.2).abs() < 1e-12);
        assert!(!d.final_mean_accuracy.covers_zero());
        let md = report(&Scenario::load(None, &[] as &[String]).unwrap(), &per_seed, &summary);
        assert!(md.contains("| dml − local | +20.00 [+17.52, +22.48] |"), "{md}");
        assert!(md.contains("t = 4.303"), "{md}");
        assert!(md.contains("optimistic"), "no validation set is said: {md}");
        let text = terminal(&summary);
        assert!(text.contains("dml − local: +20.00 [+17.52, +22.48] points"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        // Equal algorithms: within noise.
        let same: Vec<SeedOutcome> = per_seed
            .iter()
            .map(|s| SeedOutcome {
                seed: s.seed,
                outcomes: vec![
                    outcome_with("local", &[0.6, 0.70], None),
                    outcome_with("dml", &[0.6, 0.70 + 0.01 * (s.seed as f64 - 5.0)], None),
                ],
            })
            .collect();
        assert!(
            report(
                &Scenario::load(None, &[] as &[String]).unwrap(),
                &same,
                &Summary::of(&same)
            )
            .contains("within noise")
        );
    }

    #[test]
    fn with_a_validation_set_the_round_is_chosen_on_it_and_reported_on_the_test_set() {
        // Validation peaks at round 2, test at round 3: the selection must not see the test.
        let o = outcome_with("dml", &[0.5, 0.6, 0.9], Some(&[0.5, 0.8, 0.7]));
        assert_eq!(o.selected.basis, Basis::Validation);
        assert_eq!(
            (o.selected.round, o.selected.accuracy, o.selected.test_accuracy),
            (2, 0.8, 0.6)
        );
    }

    #[test]
    fn the_seeds_figure_draws_each_mean_in_its_interval_and_the_differences_beside() {
        let per_seed = three_seeds();
        let curves = curves(&per_seed);
        let (round, at) = curves[1].1[2];
        assert_eq!(round, 3.0);
        assert!((at.mean - 80.0).abs() < 1e-9 && at.low.unwrap() < 80.0 && at.high.unwrap() > 80.0);
        let dir = std::env::temp_dir().join(format!("wdml-seeds-figure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let scenario = Scenario::load(None, &[] as &[String]).unwrap();
        plot(&scenario, &per_seed).write(&dir, "seeds").unwrap();
        let svg = std::fs::read_to_string(dir.join("seeds.svg")).unwrap();
        assert!(dir.join("seeds.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        // Two bands and lines in the first panel, one (dml − local) in the second.
        assert_eq!(svg.matches("<polygon").count(), 3, "{svg}");
        let texts = crate::cli::plot::tests::texts(&svg);
        assert!(
            texts.iter().any(|t| t.contains("band: its 95 % t-interval")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.contains("minus the first algorithm")),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t.contains("3 seeds (4, 5, 6)")), "{texts:?}");
    }
}

//! `wdml compare --sweep … --seeds …`: every setting of a sweep over seeds, judged the
//! way the radio-resource literature judges: the radio energy and air time to reach one
//! target accuracy (on the validation set when every run holds one out), and the final
//! accuracy, each as the mean over the seeds with its 95 % t-interval; every setting
//! against the sweep's first (its baseline) paired by seed; and the Pareto front of
//! energy to target against accuracy over the settings. `sweep.md`, `sweep.json` and
//! the terminal's table say the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{Interval, t975};
use super::{Basis, Outcome, Sweep, label, pareto};
use crate::scenario::Scenario;

/// One run of the grid: a setting of the sweep, a seed, an algorithm's outcome.
pub struct Run {
    pub seed: u64,
    pub setting: Vec<(String, String)>,
    pub outcome: Outcome,
}

/// One setting and algorithm over the seeds.
#[derive(Debug, Serialize)]
pub struct Point {
    pub setting: BTreeMap<String, String>,
    pub algorithm: String,
    pub final_mean_accuracy: Interval,
    /// The test accuracy at each run's selected round (chosen on the basis).
    pub selected_test_accuracy: Interval,
    /// The whole run's radio energy (transmit and receive, all nodes) and air time.
    pub energy_j: Interval,
    pub airtime_s: Interval,
    /// How many seeds reached the target; the costs to it are over those seeds, and
    /// only when all did (a mean over the lucky ones would flatter the setting).
    pub reached: usize,
    pub rounds_to_target: Option<Interval>,
    pub energy_to_target_j: Option<Interval>,
    pub airtime_to_target_s: Option<Interval>,
    /// This setting minus the first, same algorithm, paired by seed (none for the first).
    pub accuracy_vs_first: Option<Interval>,
    /// This setting's energy to target over the first's, seed by seed (none for the
    /// first, or when either missed the target in some seed).
    pub energy_to_target_ratio_vs_first: Option<Interval>,
    /// On the front of energy to target (mean) against final accuracy (mean), among
    /// every setting and algorithm that reached the target in every seed.
    pub on_front: bool,
}

/// `sweep.json` of a sweep over seeds.
#[derive(Debug, Serialize)]
pub struct Frontier {
    pub basis: Basis,
    /// The target accuracy, on the basis, and how it was chosen.
    pub target: f64,
    pub target_from: &'static str,
    pub interval: &'static str,
    pub seeds: Vec<u64>,
    pub points: Vec<Point>,
}

/// The round, energy and air time at which `outcome` first reached `target` on `basis`.
fn to_target(outcome: &Outcome, basis: Basis, target: f64) -> Option<(f64, f64, f64)> {
    // A small tolerance: the default target is some run's own best.
    let reached = outcome.curve.iter().find(|p| basis.accuracy(p) >= target - 1e-9)?;
    Some((
        f64::from(reached.round),
        reached.cumulative_energy_j,
        reached.cumulative_airtime_s,
    ))
}

impl Frontier {
    /// `runs`: every (setting, seed, algorithm) of the grid; `settings` in the sweep's
    /// order (the first is the baseline); `target`: given, or the lowest best accuracy
    /// of any run, which every run reached.
    pub fn of(runs: &[Run], settings: &[Vec<(String, String)>], seeds: &[u64], target: Option<f64>) -> Frontier {
        let basis = match runs.iter().all(|r| Basis::of(&r.outcome.curve) == Basis::Validation) {
            true => Basis::Validation,
            false => Basis::Test,
        };
        let best = |o: &Outcome| o.curve.iter().map(|p| basis.accuracy(p)).fold(0.0, f64::max);
        let (target, target_from) = match target {
            Some(t) => (t, "given (--target)"),
            None => (
                runs.iter().map(|r| best(&r.outcome)).fold(f64::INFINITY, f64::min),
                "the lowest best mean accuracy of any run, so that every run reaches it",
            ),
        };
        let mut algorithms: Vec<&str> = Vec::new();
        for run in runs {
            if !algorithms.contains(&run.outcome.algorithm.as_str()) {
                algorithms.push(&run.outcome.algorithm);
            }
        }
        // The outcomes of one setting and algorithm, seed by seed in `seeds`' order.
        let of = |setting: &[(String, String)], algorithm: &str| -> Vec<&Outcome> {
            seeds
                .iter()
                .filter_map(|&seed| {
                    runs.iter()
                        .find(|r| r.seed == seed && r.setting == setting && r.outcome.algorithm == algorithm)
                        .map(|r| &r.outcome)
                })
                .collect()
        };
        let mut points = Vec::new();
        for algorithm in &algorithms {
            let first = of(&settings[0], algorithm);
            for (index, setting) in settings.iter().enumerate() {
                let these = of(setting, algorithm);
                let field = |f: fn(&Outcome) -> f64| Interval::of(&these.iter().map(|o| f(o)).collect::<Vec<_>>());
                let costs: Vec<_> = these.iter().filter_map(|o| to_target(o, basis, target)).collect();
                let all_reached = costs.len() == these.len() && !these.is_empty();
                let cost = |pick: fn(&(f64, f64, f64)) -> f64| {
                    all_reached.then(|| Interval::of(&costs.iter().map(pick).collect::<Vec<_>>()))
                };
                let paired = index > 0 && first.len() == these.len();
                let ratio = paired
                    .then(|| {
                        let ratios: Option<Vec<f64>> = first
                            .iter()
                            .zip(&these)
                            .map(|(a, b)| Some(to_target(b, basis, target)?.1 / to_target(a, basis, target)?.1))
                            .collect();
                        ratios.map(|r| Interval::of(&r))
                    })
                    .flatten();
                points.push(Point {
                    setting: setting.iter().cloned().collect(),
                    algorithm: algorithm.to_string(),
                    final_mean_accuracy: field(|o| o.final_mean_accuracy),
                    selected_test_accuracy: field(|o| o.selected.test_accuracy),
                    energy_j: field(|o| o.energy_j),
                    airtime_s: field(|o| o.airtime_s),
                    reached: costs.len(),
                    rounds_to_target: cost(|c| c.0),
                    energy_to_target_j: cost(|c| c.1),
                    airtime_to_target_s: cost(|c| c.2),
                    accuracy_vs_first: paired.then(|| {
                        let accuracy =
                            |list: &[&Outcome]| list.iter().map(|o| o.final_mean_accuracy).collect::<Vec<_>>();
                        Interval::paired(&accuracy(&first), &accuracy(&these))
                    }),
                    energy_to_target_ratio_vs_first: ratio,
                    on_front: false,
                });
            }
        }
        let front = pareto(
            &points
                .iter()
                .filter_map(|p| Some((p.energy_to_target_j.as_ref()?.mean, p.final_mean_accuracy.mean)))
                .collect::<Vec<_>>(),
        );
        for p in &mut points {
            if let Some(energy) = &p.energy_to_target_j {
                p.on_front = front.contains(&(energy.mean, p.final_mean_accuracy.mean));
            }
        }
        Frontier {
            basis,
            target,
            target_from,
            interval: "95 % Student-t: mean ± t(0.975, n − 1) · sd / √n over the n seeds; against the first setting paired by seed",
            seeds: seeds.to_vec(),
            points,
        }
    }
}

/// `sweep.md`.
pub fn report(scenario: &Scenario, sweeps: &[Sweep], frontier: &Frontier) -> String {
    let mut md = String::new();
    let fields: Vec<&str> = sweeps.iter().map(|(f, _)| f.as_str()).collect();
    let n = frontier.seeds.len();
    let _ = writeln!(
        md,
        "# Sweep over seeds: {} over {}\n",
        scenario.run.name,
        fields.join(" × ")
    );
    let _ = writeln!(
        md,
        "{}; seeds {}. `seed-<s>/<setting>/` has each run, `seed-<s>/sweep.md` each seed's sweep.\n",
        super::setup(scenario),
        frontier.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
    );
    let _ = writeln!(
        md,
        "Every figure is the mean over the {n} seeds with its 95 % t-interval in brackets (t = {}). \
         Energy: the emulated radio's, transmit and receive, all nodes; to target: until the mean {} \
         accuracy first reached {:.2} % ({}){}. \"vs first\": against the first setting of the sweep, \
         paired by seed (accuracy in points, energy to target as a ratio); \"within noise\" where the \
         interval covers zero (or one, for a ratio). The front: energy to target against final \
         accuracy, over every setting that reached the target in every seed.\n",
        if n > 1 {
            format!("{:.3}", t975(n - 1))
        } else {
            "–".into()
        },
        frontier.basis.name(),
        100.0 * frontier.target,
        frontier.target_from,
        match frontier.basis {
            Basis::Validation => "",
            Basis::Test => "; without a validation set (data.validation) the target is on the test set",
        },
    );
    let _ = writeln!(
        md,
        "| {} | algorithm | final mean acc, % | test acc at selected round, % | energy to target, mJ | air time to target, s | rounds to target | accuracy vs first, points | energy to target vs first, × | on the front |",
        fields.join(" | ")
    );
    let _ = writeln!(md, "|{}---|{}---|", "---|".repeat(fields.len()), "---:|".repeat(7));
    for p in &frontier.points {
        let cells: Vec<String> = sweeps
            .iter()
            .map(|(f, _)| p.setting[f].trim_matches('"').to_string())
            .collect();
        let missing = || format!("{}/{n} reached", p.reached);
        let noise = |i: &Interval, null: f64| {
            let covers = match (i.low, i.high) {
                (Some(low), Some(high)) => low <= null && null <= high,
                _ => true,
            };
            if covers { " (within noise)" } else { "" }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cells.join(" | "),
            p.algorithm,
            p.final_mean_accuracy.show(100.0, false),
            p.selected_test_accuracy.show(100.0, false),
            p.energy_to_target_j
                .as_ref()
                .map_or_else(missing, |i| i.show(1e3, false)),
            p.airtime_to_target_s
                .as_ref()
                .map_or_else(missing, |i| i.show(1.0, false)),
            p.rounds_to_target.as_ref().map_or_else(missing, |i| i.show(1.0, false)),
            p.accuracy_vs_first
                .as_ref()
                .map_or("–".into(), |i| format!("{}{}", i.show(100.0, true), noise(i, 0.0))),
            p.energy_to_target_ratio_vs_first
                .as_ref()
                .map_or("–".into(), |i| format!("{}{}", i.show(1.0, false), noise(i, 1.0))),
            if p.on_front { "yes" } else { "" },
        );
    }
    md
}

/// The table for a terminal: one line per setting and algorithm.
pub fn terminal(sweeps: &[Sweep], frontier: &Frontier) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36} {:<6} {:>14} {:>16} {:>14}",
        "setting", "algo", "final acc, %", "energy to tgt, J", "vs first, ×"
    );
    for p in &frontier.points {
        let setting: Vec<(String, String)> = sweeps.iter().map(|(f, _)| (f.clone(), p.setting[f].clone())).collect();
        let show =
            |i: &Option<Interval>, scale| i.as_ref().map_or("–".to_string(), |i| format!("{:.3}", scale * i.mean));
        let _ = writeln!(
            out,
            "{:<36} {:<6} {:>14} {:>16} {:>14}{}",
            label(&setting),
            p.algorithm,
            format!("{:.2}", 100.0 * p.final_mean_accuracy.mean),
            show(&p.energy_to_target_j, 1.0),
            show(&p.energy_to_target_ratio_vs_first, 1.0),
            if p.on_front { "  front" } else { "" },
        );
    }
    let _ = writeln!(
        out,
        "(means over seeds {}; target {:.2} % mean {} accuracy; intervals in sweep.md)",
        frontier.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        100.0 * frontier.target,
        frontier.basis.name()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::compare::tests::outcome_with;

    fn run(seed: u64, setting: &str, accuracies: &[f64], energy_per_round: f64) -> Run {
        let mut outcome = outcome_with("dml", accuracies, Some(accuracies));
        for (i, p) in outcome.curve.iter_mut().enumerate() {
            p.cumulative_energy_j = energy_per_round * (i + 1) as f64;
        }
        outcome.final_mean_accuracy = *accuracies.last().unwrap();
        Run {
            seed,
            setting: vec![("channel.selection".into(), setting.into())],
            outcome,
        }
    }

    #[test]
    fn energy_to_target_is_compared_seed_by_seed_against_the_first_setting() {
        let settings = vec![
            vec![("channel.selection".to_string(), "all".to_string())],
            vec![("channel.selection".to_string(), "pairs".to_string())],
        ];
        // "pairs" reaches 0.7 one round later in each seed, at a quarter of the energy a
        // round: its energy to target is 2/4 = half the full mesh's, in every seed.
        let runs = vec![
            run(1, "all", &[0.5, 0.7, 0.8], 4.0),
            run(2, "all", &[0.6, 0.7, 0.75], 4.0),
            run(1, "pairs", &[0.5, 0.6, 0.7], 1.0),
            run(2, "pairs", &[0.55, 0.65, 0.7], 1.0),
        ];
        let frontier = Frontier::of(&runs, &settings, &[1, 2], None);
        assert_eq!(frontier.basis, Basis::Validation);
        // The lowest best of any run: every run reaches it.
        assert!((frontier.target - 0.7).abs() < 1e-12);
        let (all, pairs) = (&frontier.points[0], &frontier.points[1]);
        assert_eq!((all.reached, pairs.reached), (2, 2));
        assert!((all.energy_to_target_j.as_ref().unwrap().mean - 8.0).abs() < 1e-12);
        assert!((pairs.energy_to_target_j.as_ref().unwrap().mean - 3.0).abs() < 1e-12);
        let ratio = pairs.energy_to_target_ratio_vs_first.as_ref().unwrap();
        assert!((ratio.mean - 0.375).abs() < 1e-12, "{ratio:?}");
        assert!(all.energy_to_target_ratio_vs_first.is_none() && all.accuracy_vs_first.is_none());
        let accuracy = pairs.accuracy_vs_first.as_ref().unwrap();
        assert!((accuracy.mean - (-0.075)).abs() < 1e-12);
        // Cheaper and less accurate: both on the front.
        assert!(all.on_front && pairs.on_front);

        // A target one seed of "pairs" misses: no cost for it, and no ratio.
        let frontier = Frontier::of(&runs, &settings, &[1, 2], Some(0.75));
        let pairs = &frontier.points[1];
        assert_eq!(pairs.reached, 0);
        assert!(pairs.energy_to_target_j.is_none() && pairs.energy_to_target_ratio_vs_first.is_none());
        assert!(!pairs.on_front);
        let text = report_text(&frontier);
        assert!(text.contains("0/2 reached"));
        // Every row of the table has as many cells as its header.
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        let cells = |l: &str| l.matches('|').count();
        assert!(
            rows.len() >= 4 && rows.iter().all(|r| cells(r) == cells(rows[0])),
            "{text}"
        );
    }

    fn report_text(frontier: &Frontier) -> String {
        let scenario = Scenario::load(None, &[]).unwrap();
        let sweeps = vec![(
            "channel.selection".to_string(),
            vec!["all".to_string(), "pairs".to_string()],
        )];
        report(&scenario, &sweeps, frontier)
    }
}

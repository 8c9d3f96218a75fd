//! `wdml compare`: one scenario under several algorithms — same seed, same split,
//! same placement and channel draws — as real processes, and the comparison: final
//! and best accuracy, accuracy against rounds, cumulative energy and air time, bytes
//! per round, and what each algorithm spent to reach a target accuracy.
//!
//! Writes `comparison.md`, `comparison.svg` / `.png` and `comparison.json` next to one run
//! directory per algorithm. With `--seeds`, does that once per seed (each seed draws
//! its own split, initialisation, placement and fading) under `seed-<s>/`, and adds
//! `seeds.md` / `seeds.json` / `seeds.svg`, since one partition can flatter or sink an
//! algorithm: each algorithm's mean over the seeds with its 95 % t-interval, and the
//! paired difference of every two algorithms ([`seeds`]). With `--sweep`, does it at
//! every setting of a grid; with both, once per seed under `seed-<s>/`, and judges each
//! setting over the seeds by its energy to one target ([`frontier`]).
//!
//! Rounds and targets are chosen on the validation set when the scenario holds one
//! out (`data.validation`), and on the test set otherwise, which every report then says
//! ([`Basis`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use wdml_coordinator::{CurvePoint, MetricsRow, Summary, bytes, curve, joules, seconds};

use super::launcher::{Launch, Progress, RunDirArgs, launch};
use super::plot::{Figure, Panel, Scale, Series, Unit, algorithm_color};
use crate::scenario::Scenario;
use wdml_node::strategy;
use wdml_proto::Algorithm;

mod frontier;
mod seeds;
mod stats;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file (TOML); default: the built-in quickstart.
    scenario: Option<PathBuf>,
    /// Override any scenario field (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    overrides: Vec<String>,
    /// Algorithms to run, in order (default: local, fedavg, dml, leaving out — and
    /// saying so — any the scenario cannot run, e.g. fedavg with different models).
    #[arg(long, value_delimiter = ',')]
    algorithms: Option<Vec<String>>,
    /// Target mean accuracy (0–1) for the cost-to-target columns; default: the best
    /// mean accuracy that every exchanging algorithm reached.
    #[arg(long)]
    target: Option<f64>,
    /// Output directory (default: runs/compare-<name>; with --sweep runs/sweep-<name>,
    /// with --seeds runs/seeds-<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repeat the comparison for each of these seeds (overriding `run.seed`) and
    /// summarise across them.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Run the comparison at every value of a field, e.g. `--sweep
    /// exchange.public_batch=32,64,128,256`; given twice, over the grid of both (e.g.
    /// with `--sweep exchange.encoding=q8,q4`). Writes sweep.{md,json,svg}: accuracy
    /// against energy and against air time, with the Pareto front. With --seeds, the
    /// sweep once per seed, and sweep.{md,json} judge each setting over the seeds:
    /// energy and air time to one target, final accuracy, each with its interval,
    /// against the first setting paired by seed.
    #[arg(long, value_name = "FIELD=V1,V2,…")]
    sweep: Vec<String>,
    /// Replace what an earlier comparison left in the output directory.
    #[arg(long)]
    overwrite: bool,
    /// Keep every run an earlier, interrupted comparison in the output directory
    /// finished under exactly the same scenario, and run only the rest.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Run every process without TLS (debugging only).
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Outcome {
    algorithm: String,
    /// The last round's mean over the nodes, each counting once.
    final_mean_accuracy: f64,
    /// The same, each node weighted by its private samples.
    weighted_final_accuracy: f64,
    /// The round an experimenter would keep, chosen on the basis.
    selected: Selected,
    worst_node_final_accuracy: f64,
    wire_bytes_per_round_per_node: f64,
    energy_j: f64,
    airtime_s: f64,
    /// CPU time of the model work (public-batch inference, local steps, evaluation)
    /// summed over every node and round: measured on this machine, not emulated. The
    /// radio's energy leaves it out; times a device's compute power, it compares.
    compute_cpu_s: f64,
    /// Floating-point work of training and inference (not evaluation), all nodes and
    /// rounds, counted from the models' shapes.
    flops: u64,
    /// With device profiles: that work's emulated time and energy on the devices.
    device_compute_s: f64,
    compute_energy_j: f64,
    /// Round, energy and air time when the target was first reached (none: never).
    to_target: Option<(u32, f64, f64)>,
    /// Emulated time of the whole run, and until the target was first reached.
    emulated_s: f64,
    emulated_to_target_s: Option<f64>,
    curve: Vec<CurvePoint>,
    final_accuracy_per_node: Vec<Option<f64>>,
}

/// What rounds and targets are chosen on: the validation set when every run of the
/// comparison holds one out (`data.validation`), else the test set (and then the
/// reports say the choice saw the test set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Basis {
    Validation,
    Test,
}

impl Basis {
    /// The validation set if every round of `curve` has its mean, else the test set.
    fn of(curve: &[CurvePoint]) -> Basis {
        if !curve.is_empty() && curve.iter().all(|p| p.mean_validation_accuracy.is_some()) {
            Basis::Validation
        } else {
            Basis::Test
        }
    }

    /// The mean accuracy a round is judged by.
    fn accuracy(self, p: &CurvePoint) -> f64 {
        match self {
            Basis::Validation => p.mean_validation_accuracy.unwrap_or(0.0),
            Basis::Test => p.mean_accuracy,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Basis::Validation => "validation",
            Basis::Test => "test",
        }
    }
}

/// The round with the best mean accuracy on the basis (the first to reach it), and the
/// test accuracy there: under [`Basis::Validation`], an estimate the choice did not see.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
struct Selected {
    basis: Basis,
    /// As `metrics.jsonl` numbers rounds (from 1).
    round: u32,
    /// On the basis.
    accuracy: f64,
    test_accuracy: f64,
}

impl Selected {
    fn of(curve: &[CurvePoint], basis: Basis) -> Selected {
        let mut best: Option<&CurvePoint> = None;
        for p in curve {
            if best.is_none_or(|b| basis.accuracy(p) > basis.accuracy(b)) {
                best = Some(p);
            }
        }
        Selected {
            basis,
            round: best.map_or(0, |p| p.round),
            accuracy: best.map_or(0.0, |p| basis.accuracy(p)),
            test_accuracy: best.map_or(0.0, |p| p.mean_accuracy),
        }
    }
}

/// One seed's comparison.
#[derive(Debug, Serialize)]
struct SeedOutcome {
    seed: u64,
    outcomes: Vec<Outcome>,
}

/// The baselines first (no exchange, then parameter averaging), then mutual learning,
/// then any other algorithm the wire names, in its order.
fn default_algorithms() -> Vec<String> {
    let mut names: Vec<String> = ["local", "fedavg", "dml"].map(String::from).to_vec();
    for a in Algorithm::ALL {
        if !names.iter().any(|n| n == a.name()) {
            names.push(a.name().to_string());
        }
    }
    names
}

pub fn main(args: Args) -> Result<ExitCode> {
    let base = Scenario::load(args.scenario.as_deref(), &args.overrides)?;
    base.preflight()?;
    let chosen = args.algorithms.is_some();
    let names = args.algorithms.clone().unwrap_or_else(default_algorithms);
    let algorithms = names
        .iter()
        .map(|a| a.parse::<Algorithm>().map_err(|e| anyhow::anyhow!("--algorithms: {e}")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(target) = args.target
        && !(target > 0.0 && target <= 1.0)
    {
        bail!("--target: {target} is not an accuracy in (0, 1]");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(seed) = args.seeds.iter().find(|s| !seen.insert(**s)) {
        bail!("--seeds: seed {seed} is given twice");
    }
    // A combination the scenario cannot run (fedavg with mixed models) is refused before
    // anything runs when asked for, and left out (saying why) from the default list.
    let mut runnable = Vec::new();
    let mut skipped = Vec::new();
    for &algorithm in &algorithms {
        match validate_under(&base, algorithm) {
            Ok(()) => runnable.push(algorithm),
            Err(e) if !chosen => {
                eprintln!("skipping {}: {e:#}", algorithm.name());
                skipped.push(format!("{} ({e:#})", algorithm.name()));
            }
            Err(e) => return Err(e.context(format!("under {}", algorithm.name()))),
        }
    }
    let algorithms = runnable;
    // A sweep and a seed series each have a directory of their own by default: the
    // README's bare `wdml compare` and its `--sweep` line must not collide.
    let kind = match (args.sweep.is_empty(), args.seeds.is_empty()) {
        (false, _) => "sweep",
        (true, false) => "seeds",
        (true, true) => "compare",
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{kind}-{}", base.run.name)));
    if args.resume {
        // What is there is kept run by run (`finished_under`).
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    } else {
        RunDirArgs {
            overwrite: args.overwrite,
            resume: false,
        }
        .prepare_with(
            &out,
            &["comparison.json", "seeds.json", "comparison.md", "sweep.json"],
            false,
        )?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let options = Launch {
        progress: Progress::Auto,
        insecure: args.insecure,
    };
    let runner = Runner {
        runtime: &runtime,
        algorithms: &algorithms,
        skipped: &skipped,
        target: args.target,
        options,
        resume: args.resume,
    };

    if !args.sweep.is_empty() {
        let sweeps = parse_sweeps(&args.sweep)?;
        let grid = grid(&sweeps);
        // Every setting is loaded and checked before anything runs.
        let mut points = Vec::new();
        for setting in &grid {
            let mut overrides = args.overrides.clone();
            overrides.extend(setting.iter().map(|(field, value)| format!("{field}={value}")));
            let scenario = Scenario::load(args.scenario.as_deref(), &overrides)
                .map_err(|e| e.context(format!("--sweep {}", label(setting))))?;
            for &algorithm in &algorithms {
                validate_under(&scenario, algorithm)
                    .map_err(|e| e.context(format!("--sweep {} under {}", label(setting), algorithm.name())))?;
            }
            scenario
                .preflight()
                .map_err(|e| e.context(format!("--sweep {}", label(setting))))?;
            points.push((setting.clone(), scenario));
        }
        if args.seeds.is_empty() {
            let outcomes = runner.sweep(&points, &out)?;
            let results: Vec<SweepPoint> = outcomes.iter().map(SweepPoint::of).collect();
            write(&out, "sweep.json", serde_json::to_string_pretty(&results)? + "\n")?;
            write(&out, "sweep.md", sweep_report(&base, &sweeps, &results))?;
            sweep_plot(&base, &sweeps, &results).write(&out, "sweep")?;
            print!("{}", sweep_terminal(&sweeps, &results));
            println!(
                "every column: {}/sweep.{{md,json,svg,png}} and <setting>/comparison.{{md,svg,png,json}}",
                out.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        // The whole sweep once per seed (each seed's own sweep.md in seed-<s>/), then every
        // setting across the seeds.
        let mut runs = Vec::new();
        for &seed in &args.seeds {
            eprintln!("===== seed {seed}");
            let seeded: Vec<(Vec<(String, String)>, Scenario)> = points
                .iter()
                .map(|(setting, scenario)| {
                    let mut scenario = scenario.clone();
                    scenario.run.seed = seed;
                    (setting.clone(), scenario)
                })
                .collect();
            let root = out.join(format!("seed-{seed}"));
            let mut base = base.clone();
            base.run.seed = seed;
            let outcomes = runner.sweep(&seeded, &root)?;
            let results: Vec<SweepPoint> = outcomes.iter().map(SweepPoint::of).collect();
            write(&root, "sweep.json", serde_json::to_string_pretty(&results)? + "\n")?;
            write(&root, "sweep.md", sweep_report(&base, &sweeps, &results))?;
            runs.extend(
                outcomes
                    .into_iter()
                    .map(|(setting, outcome)| frontier::Run { seed, setting, outcome }),
            );
        }
        let settings: Vec<Vec<(String, String)>> = points.iter().map(|(setting, _)| setting.clone()).collect();
        let frontier = frontier::Frontier::of(&runs, &settings, &args.seeds, args.target);
        write(&out, "sweep.json", serde_json::to_string_pretty(&frontier)? + "\n")?;
        write(&out, "sweep.md", frontier::report(&base, &sweeps, &frontier))?;
        print!("{}", frontier::terminal(&sweeps, &frontier));
        println!(
            "every column: {}/sweep.{{md,json}}, and seed-<s>/sweep.md and seed-<s>/<setting>/ for each seed",
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.seeds.is_empty() {
        let _dashboard = serve_comparison(&runtime, &out, args.insecure)?;
        let (outcomes, target) = runner.compare(&base, &out)?;
        print!("{}", terminal(&outcomes, target, &skipped));
        println!("every column: {}/comparison.{{md,svg,json}}", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut per_seed = Vec::new();
    for &seed in &args.seeds {
        let mut scenario = base.clone();
        scenario.run.seed = seed;
        eprintln!("==== seed {seed}");
        let (outcomes, _) = runner.compare(&scenario, &out.join(format!("seed-{seed}")))?;
        per_seed.push(SeedOutcome { seed, outcomes });
    }
    let summary = seeds::Summary::of(&per_seed);
    write(&out, "seeds.md", seeds::report(&base, &per_seed, &summary))?;
    write(&out, "seeds.json", serde_json::to_string_pretty(&summary)? + "\n")?;
    seeds::plot(&base, &per_seed).write(&out, "seeds")?;
    print!("{}", seeds::terminal(&summary));
    println!(
        "every column: {}/seeds.{{md,json,svg,png}} and seed-<s>/comparison.{{md,svg,json}}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The comparison's own dashboard on a free loopback port, until the returned sender
/// is dropped: the algorithms side by side as their runs go on (each run also serves
/// its own). HTTPS under a CA made for it, kept in `out/tls`, which `wdml view OUT`
/// serves with afterwards.
fn serve_comparison(
    runtime: &tokio::runtime::Runtime,
    out: &Path,
    insecure: bool,
) -> Result<tokio::sync::oneshot::Sender<()>> {
    use wdml_transport::{self as transport, Identity, Limits, Security};
    let security = if insecure {
        Security::Insecure
    } else {
        let tls = out.join("tls");
        super::launcher::ensure_certs(&tls, &[Identity::Coordinator])?;
        Security::from_dir(&tls, Identity::Coordinator)?
    };
    let listener = runtime.block_on(super::bind(([127, 0, 0, 1], 0).into(), "--http"))?;
    let scheme = if security.is_tls() { "https" } else { "http" };
    let access = anyhow::Context::context(
        wdml_coordinator::dashboard::Access::token_in(out),
        "the dashboard's token",
    )?;
    eprintln!(
        "comparison dashboard (the algorithms side by side): {}",
        access.url(&format!("{scheme}://{}/", listener.local_addr()?))
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = wdml_coordinator::dashboard::router(wdml_coordinator::dashboard::Source::compare(out), access);
    runtime.spawn(async move {
        let until = async {
            let _ = stopped.await;
        };
        if let Err(e) = transport::serve_web(router, listener, security, Limits::web(), until).await {
            tracing::warn!("the comparison's dashboard stopped: {e}");
        }
    });
    Ok(stop)
}

/// A field swept and its values (TOML, as `--set` takes them; a bare word is a string).
type Sweep = (String, Vec<String>);

/// One point of a sweep's grid: each swept field with its value.
type Setting = Vec<(String, String)>;

/// `--sweep` arguments: at most two fields, each with at least one value, no field
/// twice.
fn parse_sweeps(args: &[String]) -> Result<Vec<Sweep>> {
    if args.len() > 2 {
        bail!(
            "--sweep: at most two fields (a grid of {} is not one picture)",
            args.len()
        );
    }
    let mut sweeps: Vec<Sweep> = Vec::new();
    for arg in args {
        let Some((field, values)) = arg.split_once('=') else {
            bail!("--sweep {arg:?}: expected FIELD=V1,V2,…, e.g. exchange.public_batch=32,64,128");
        };
        let field = field.trim().to_string();
        if sweeps.iter().any(|(f, _)| *f == field) {
            bail!("--sweep: {field} is given twice");
        }
        let values: Vec<String> = values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                // `q4` reads as a string; `64`, `"q4"`, `true` as themselves.
                if toml::from_str::<toml::Table>(&format!("v = {v}")).is_ok() {
                    v.to_string()
                } else {
                    format!("\"{v}\"")
                }
            })
            .collect();
        if values.is_empty() {
            bail!("--sweep {field}: no values");
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = values.iter().find(|v| !seen.insert(*v)) {
            bail!("--sweep {field}: {twice} is given twice");
        }
        sweeps.push((field, values));
    }
    Ok(sweeps)
}

/// Every combination of the swept values, the first field varying slowest.
fn grid(sweeps: &[Sweep]) -> Vec<Vec<(String, String)>> {
    let mut grid: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (field, values) in sweeps {
        grid = grid
            .into_iter()
            .flat_map(|setting| {
                values.iter().map(move |v| {
                    let mut next = setting.clone();
                    next.push((field.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    grid
}

/// A setting's one name, wherever a sweep names it — the progress line, an error, its
/// directory, the terminal's table and the figure's labels: `public_batch=64,encoding=q4`
/// (each field by its last part, in the order of the `--sweep`s; a character a
/// directory name cannot hold as `_`).
fn label(setting: &[(String, String)]) -> String {
    setting
        .iter()
        .map(|(f, v)| {
            let field = f.rsplit('.').next().unwrap_or(f);
            let value: String = v
                .trim_matches('"')
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{field}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `scenario` can run under `algorithm` (fedavg needs one model, …).
fn validate_under(scenario: &Scenario, algorithm: Algorithm) -> Result<()> {
    let mut scenario = scenario.clone();
    scenario.run.algorithm = algorithm;
    scenario.validate()
}

/// Writes `text` into `dir/name`, atomically: the comparison's own files.
fn write(dir: &Path, name: &str, text: String) -> Result<()> {
    wdml_files::write_atomic(&dir.join(name), text.as_bytes(), wdml_files::Mode::Public)?;
    Ok(())
}

/// One algorithm at one setting of a sweep.
#[derive(Debug, Serialize)]
struct SweepPoint {
    setting: BTreeMap<String, String>,
    algorithm: String,
    final_mean_accuracy: f64,
    /// The setting's selected round: a grid is tuned on its accuracy there (on the
    /// validation set when the scenario holds one out).
    selected: Selected,
    worst_node_final_accuracy: f64,
    wire_bytes_per_round_per_node: f64,
    energy_j: f64,
    airtime_s: f64,
}

impl SweepPoint {
    fn of((setting, o): &(Setting, Outcome)) -> SweepPoint {
        SweepPoint {
            setting: setting.iter().cloned().collect(),
            algorithm: o.algorithm.clone(),
            final_mean_accuracy: o.final_mean_accuracy,
            selected: o.selected,
            worst_node_final_accuracy: o.worst_node_final_accuracy,
            wire_bytes_per_round_per_node: o.wire_bytes_per_round_per_node,
            energy_j: o.energy_j,
            airtime_s: o.airtime_s,
        }
    }

    /// The setting's values in the order of the sweeps, e.g. `64 | q4` (a table's cells).
    fn cells(&self, sweeps: &[Sweep]) -> String {
        sweeps
            .iter()
            .map(|(f, _)| self.setting[f].trim_matches('"').to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The setting's name, as [`label`] gives it: `public_batch=64,encoding=q4`.
    fn label(&self, sweeps: &[Sweep]) -> String {
        let setting: Vec<(String, String)> = sweeps
            .iter()
            .map(|(f, _)| (f.clone(), self.setting[f].clone()))
            .collect();
        label(&setting)
    }
}

/// The points no other point beats on both cost and accuracy (cheaper or as cheap and
/// at least as accurate, strictly better in one): the Pareto front, by cost.
fn pareto(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(c, a)| c.is_finite() && a.is_finite())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for point in sorted {
        if front.last().is_none_or(|last| point.1 > last.1) {
            front.push(point);
        }
    }
    front
}

fn sweep_report(scenario: &Scenario, sweeps: &[Sweep], results: &[SweepPoint]) -> String {
    let mut md = String::new();
    let fields: Vec<&str> = sweeps.iter().map(|(f, _)| f.as_str()).collect();
    let _ = writeln!(md, "# Sweep: {} over {}\n", scenario.run.name, fields.join(" × "));
    let _ = writeln!(
        md,
        "{}, seed {}. Energy and air time: the emulated radio's, all nodes, the whole run. Each \
         setting's full comparison is in its own directory.\n",
        setup(scenario),
        scenario.run.seed,
    );
    let basis = results.first().map_or(Basis::Test, |p| p.selected.basis);
    let _ = writeln!(
        md,
        "To tune a setting, compare each algorithm's best mean {0} accuracy (the selected round's){1}.\n",
        basis.name(),
        match basis {
            Basis::Validation => ", then report the test accuracy of the chosen setting only",
            Basis::Test => "; without a validation set (data.validation) that choice sees the test set",
        }
    );
    let _ = writeln!(
        md,
        "| {} | algorithm | selected round: {} acc | final mean acc | worst node | wire bytes / round / node | air time | energy | on the energy front |",
        fields.join(" | "),
        basis.name()
    );
    let _ = writeln!(
        md,
        "|{}---|---:|---:|---:|---:|---:|---:|---|",
        "---|".repeat(fields.len())
    );
    for algorithm in algorithms_of(results) {
        let these: Vec<&SweepPoint> = results.iter().filter(|p| p.algorithm == algorithm).collect();
        let front = pareto(
            &these
                .iter()
                .map(|p| (p.energy_j, p.final_mean_accuracy))
                .collect::<Vec<_>>(),
        );
        for p in these {
            let on_front = front.contains(&(p.energy_j, p.final_mean_accuracy));
            let _ = writeln!(
                md,
                "| {} | {} | {} ({:.2} %) | {:.2} % | {:.2} % | {} | {:.3} s | {:.4} J | {} |",
                p.cells(sweeps),
                p.algorithm,
                p.selected.round,
                100.0 * p.selected.accuracy,
                100.0 * p.final_mean_accuracy,
                100.0 * p.worst_node_final_accuracy,
                bytes(p.wire_bytes_per_round_per_node as u64),
                p.airtime_s,
                p.energy_j,
                if on_front { "yes" } else { "" }
            );
        }
    }
    md
}

/// A scenario in a line: `8 nodes (mlp:256,128, cnn:16,32,128), 30 rounds × 20 local
/// steps, partition dirichlet:0.5, channel d2d-urban`.
fn setup(scenario: &Scenario) -> String {
    format!(
        "{} nodes ({}), {} rounds × {} local steps, partition {}, channel {}",
        scenario.nodes.count,
        scenario.nodes.models.join(", "),
        scenario.run.rounds,
        scenario.train.local_steps,
        scenario.data.partition,
        scenario.channel.preset,
    )
}

/// The algorithms of a sweep, in the order they ran.
fn algorithms_of(results: &[SweepPoint]) -> Vec<String> {
    let mut algorithms: Vec<String> = Vec::new();
    for p in results {
        if !algorithms.contains(&p.algorithm) {
            algorithms.push(p.algorithm.clone());
        }
    }
    algorithms
}

/// Accuracy against energy and against air time: a dot per setting (labelled with its
/// values), a colour per algorithm, and each algorithm's Pareto front as a line.
fn sweep_plot(scenario: &Scenario, sweeps: &[Sweep], results: &[SweepPoint]) -> Figure {
    let algorithms = algorithms_of(results);
    let panel = |title: &'static str, x_label: &'static str, x_unit, cost: fn(&SweepPoint) -> f64| Panel {
        title,
        x_label,
        y_label: "final mean test accuracy, %",
        x: Scale::Log,
        x_unit,
        y_unit: Unit::None,
        series: algorithms
            .iter()
            .flat_map(|a| {
                let these: Vec<&SweepPoint> = results.iter().filter(|p| &p.algorithm == a).collect();
                let points: Vec<(f64, f64)> = these.iter().map(|p| (cost(p), 100.0 * p.final_mean_accuracy)).collect();
                let color = algorithm_color(a);
                let mut series = vec![Series {
                    marks: true,
                    labels: these.iter().map(|p| p.label(sweeps)).collect(),
                    ..Series::line(a.clone(), color, points.clone())
                }];
                // Zero cost (local training) has no place on a log axis, nor a front:
                // the figure's note names it.
                if points.iter().any(|&(cost, _)| cost > 0.0) {
                    series.push(Series::line(format!("{a} (front)"), color, pareto(&points)));
                }
                series
            })
            .collect(),
    };
    let fields: Vec<&str> = sweeps.iter().map(|(f, _)| f.as_str()).collect();
    Figure {
        title: format!("{}: sweep of {}", scenario.run.name, fields.join(" × ")),
        panels: vec![
            panel(
                "against energy (log)",
                "radio energy (all nodes, whole run)",
                Unit::Joule,
                |p| p.energy_j,
            ),
            panel(
                "against air time (log)",
                "air time (all nodes, whole run)",
                Unit::Second,
                |p| p.airtime_s,
            ),
        ],
    }
}

/// The sweep for a terminal, within 80 columns: each setting by its name on a line of
/// its own (a name as long as a grid's does not fit a column), its algorithms under it.
fn sweep_terminal(sweeps: &[Sweep], results: &[SweepPoint]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:<9} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "setting", "algorithm", "final", "worst", "bytes/rd", "air time", "energy"
    );
    let mut last = None;
    for p in results {
        let name = p.label(sweeps);
        if last.as_ref() != Some(&name) {
            let _ = writeln!(out, "{name}");
            last = Some(name);
        }
        let _ = writeln!(
            out,
            "{:<11} {:<9} {:>6.2}% {:>6.2}% {:>9} {:>9} {:>9}",
            "",
            p.algorithm,
            100.0 * p.final_mean_accuracy,
            100.0 * p.worst_node_final_accuracy,
            bytes(p.wire_bytes_per_round_per_node as u64),
            seconds(p.airtime_s),
            joules(p.energy_j),
        );
    }
    out
}

/// How every comparison of one command runs: the algorithms, the target, the launch
/// options and whether finished runs are kept.
struct Runner<'a> {
    runtime: &'a tokio::runtime::Runtime,
    algorithms: &'a [Algorithm],
    skipped: &'a [String],
    target: Option<f64>,
    options: Launch,
    resume: bool,
}

impl Runner<'_> {
    /// Every setting of a sweep, each compared in `out/<setting>/`: every run's outcome
    /// beside its setting.
    fn sweep(&self, points: &[(Setting, Scenario)], out: &Path) -> Result<Vec<(Setting, Outcome)>> {
        let mut outcomes = Vec::new();
        for (setting, scenario) in points {
            eprintln!("==== {}", label(setting));
            let (these, _) = self.compare(scenario, &out.join(label(setting)))?;
            outcomes.extend(these.into_iter().map(|o| (setting.clone(), o)));
        }
        Ok(outcomes)
    }

    /// `scenario` under each algorithm in `out/<algorithm>/`, and the comparison's
    /// files in `out`.
    fn compare(&self, scenario: &Scenario, out: &Path) -> Result<(Vec<Outcome>, f64)> {
        let Runner {
            runtime,
            algorithms,
            skipped,
            target,
            options,
            resume,
        } = *self;
        let mut runs = Vec::new();
        for &algorithm in algorithms {
            let mut scenario = scenario.clone();
            scenario.run.algorithm = algorithm;
            let dir = out.join(algorithm.name());
            let kept = match resume {
                true => finished_under(&dir, &scenario)?,
                false => None,
            };
            let summary = match kept {
                Some(summary) => {
                    eprintln!("== {}: kept (finished under the same scenario)", dir.display());
                    summary
                }
                None => {
                    eprintln!(
                        "== {} under {} (seed {})",
                        scenario.run.name,
                        algorithm.name(),
                        scenario.run.seed
                    );
                    RunDirArgs {
                        overwrite: resume,
                        resume: false,
                    }
                    .prepare(&dir)?;
                    runtime.block_on(launch(&scenario, &dir, options))?
                }
            };
            eprintln!("{}", summary.table());
            // Late reports (semi-synchronous rounds) count for costs and accuracy too.
            let mut rows = MetricsRow::read_all(&dir)?;
            rows.extend(MetricsRow::read_late(&dir)?);
            runs.push((algorithm, summary, rows));
        }

        let basis = if runs
            .iter()
            .all(|(_, _, rows)| Basis::of(&curve(rows)) == Basis::Validation)
        {
            Basis::Validation
        } else {
            Basis::Test
        };
        let best = |rows: &[MetricsRow]| Selected::of(&curve(rows), basis).accuracy;
        let exchanging: Vec<f64> = runs
            .iter()
            .filter(|(a, _, _)| strategy::exchanges(*a))
            .map(|(_, _, rows)| best(rows))
            .collect();
        let (target, how) = match target {
            Some(t) => (t, "given"),
            None if !exchanging.is_empty() => (
                exchanging.iter().copied().fold(f64::INFINITY, f64::min),
                "the best mean accuracy every exchanging algorithm reached",
            ),
            None => (
                runs.iter().map(|(_, _, r)| best(r)).fold(0.0, f64::max),
                "the best mean accuracy reached",
            ),
        };
        let outcomes: Vec<Outcome> = runs
            .iter()
            .map(|(a, s, rows)| outcome(*a, s, rows, target, basis))
            .collect();

        write(out, "comparison.md", report(scenario, &outcomes, target, how, skipped))?;
        plot(scenario, &outcomes).write(out, "comparison")?;
        write(out, "comparison.json", serde_json::to_string_pretty(&outcomes)? + "\n")?;
        Ok((outcomes, target))
    }
}

/// The summary of the run in `dir`, if it finished under exactly `scenario`: what
/// `--resume` keeps. Its `scenario.toml` is read back as a scenario and compared field
/// by field (a field added since it was written reads as its default, as the run had it).
fn finished_under(dir: &Path, scenario: &Scenario) -> Result<Option<Summary>> {
    let (Ok(stored), Ok(summary)) = (
        std::fs::read_to_string(dir.join("scenario.toml")),
        std::fs::read_to_string(dir.join("summary.json")),
    ) else {
        return Ok(None);
    };
    let summary: Summary = serde_json::from_str(&summary)
        .with_context(|| format!("{}: not a run summary", dir.join("summary.json").display()))?;
    let Ok(stored) = Scenario::parse(&stored, &dir.join("scenario.toml").display().to_string(), &[]) else {
        // A record this build cannot read is not a run it can keep.
        return Ok(None);
    };
    Ok((summary.finished && stored.to_toml()? == scenario.to_toml()?).then_some(summary))
}

/// The comparison for a terminal, within 80 columns (comparison.md has every column).
fn terminal(outcomes: &[Outcome], target: f64, skipped: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "algorithm", "final", "worst", "bytes/rd", "air time", "energy", "compute", "to target"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "{:<9} {:>6.2}% {:>6.2}% {:>9} {:>9} {:>9} {:>9} {:>10}",
            o.algorithm,
            100.0 * o.final_mean_accuracy,
            100.0 * o.worst_node_final_accuracy,
            bytes(o.wire_bytes_per_round_per_node as u64),
            seconds(o.airtime_s),
            joules(o.energy_j),
            seconds(o.compute_cpu_s),
            o.to_target.map_or("never".into(), |(r, _, _)| format!("round {r}")),
        );
    }
    let _ = writeln!(
        out,
        "(final: mean accuracy over the nodes; worst: the worst node's; bytes/rd: wire\n \
         bytes per round per node; air time, energy, compute CPU: all nodes, whole run;\n \
         to target: first round at {:.2} % mean accuracy)",
        100.0 * target
    );
    for skip in skipped {
        out.push_str(&wrap(&format!("not run: {skip}"), 80));
    }
    out
}

/// `text` as lines of at most `width` characters (a longer word stands alone), the
/// lines after the first indented by two spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.trim().is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = "  ".into();
        } else if !line.trim().is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

fn outcome(algorithm: Algorithm, summary: &Summary, rows: &[MetricsRow], target: f64, basis: Basis) -> Outcome {
    let curve = curve(rows);
    let last = curve.last();
    let reached = curve.iter().find(|p| basis.accuracy(p) >= target - 1e-9);
    // The nodes the mean counts (an adversary's model is left out of it).
    let counted: Vec<(f64, f64)> = summary
        .nodes
        .iter()
        .filter(|n| !n.adversary)
        .filter_map(|n| Some((f64::from(n.private_samples), n.final_accuracy?)))
        .collect();
    let samples: f64 = counted.iter().map(|(n, _)| n).sum();
    Outcome {
        algorithm: algorithm.name().to_string(),
        final_mean_accuracy: last.map_or(0.0, |p| p.mean_accuracy),
        weighted_final_accuracy: counted.iter().map(|(n, a)| n * a).sum::<f64>() / samples.max(1.0),
        selected: Selected::of(&curve, basis),
        worst_node_final_accuracy: summary.min_final_accuracy.unwrap_or(0.0),
        wire_bytes_per_round_per_node: curve.iter().map(|p| p.wire_bytes_per_node).sum::<f64>()
            / curve.len().max(1) as f64,
        energy_j: last.map_or(0.0, |p| p.cumulative_energy_j),
        airtime_s: last.map_or(0.0, |p| p.cumulative_airtime_s),
        compute_cpu_s: rows.iter().map(|r| r.metrics.compute_cpu_ms).sum::<f64>() / 1000.0,
        flops: rows.iter().map(|r| r.metrics.flops).sum(),
        device_compute_s: rows.iter().map(|r| r.metrics.device_compute_s).sum(),
        compute_energy_j: rows.iter().map(|r| r.metrics.compute_energy_j).sum(),
        // A small tolerance: the default target is some algorithm's own best.
        to_target: reached.map(|p| (p.round, p.cumulative_energy_j, p.cumulative_airtime_s)),
        emulated_s: last.map_or(0.0, |p| p.cumulative_emulated_s),
        emulated_to_target_s: reached.map(|p| p.cumulative_emulated_s),
        final_accuracy_per_node: summary.nodes.iter().map(|n| n.final_accuracy).collect(),
        curve,
    }
}

fn report(scenario: &Scenario, outcomes: &[Outcome], target: f64, how: &str, skipped: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Comparison: {}\n", scenario.run.name);
    let _ = writeln!(
        md,
        "{} nodes ({}), {} rounds × {} local steps, batch {}, public batch {} ({}), partition {}, channel {}, seed {}.\n",
        scenario.nodes.count,
        scenario.nodes.models.join(", "),
        scenario.run.rounds,
        scenario.train.local_steps,
        scenario.train.batch_size,
        scenario.exchange.public_batch,
        scenario.exchange.encoding,
        scenario.data.partition,
        scenario.channel.preset,
        scenario.run.seed,
    );
    for skip in skipped {
        let _ = writeln!(md, "Not run: {skip}.\n");
    }
    let basis = outcomes.first().map_or(Basis::Test, |o| o.selected.basis);
    let _ = writeln!(
        md,
        "Target: {:.2} % mean {} accuracy ({how}). {} Energy and air time (the emulated radio's) and \
         compute (CPU time of the model work, measured on this machine) are summed over all nodes. \
         Mean accuracy: over the nodes, each counting once; weighted: each node by its private samples.\n",
        100.0 * target,
        basis.name(),
        match basis {
            Basis::Validation =>
                "The selected round is each run's best on the validation set \
                                  (data.validation), and its test accuracy an estimate that choice did not see.",
            Basis::Test =>
                "No validation set (data.validation = 0): the selected round and the target are \
                            chosen on the test set, so the accuracy there is optimistic.",
        }
    );
    let _ = writeln!(
        md,
        "| algorithm | final mean acc | weighted | selected round ({}) | test acc there | worst node (final) | wire bytes / round / node | air time | energy | compute CPU | rounds to target | air time to target | energy to target |",
        basis.name()
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let (rounds, energy, airtime) = match o.to_target {
            Some((r, e, a)) => (r.to_string(), format!("{:.4} J", e), format!("{:.3} s", a)),
            None => ("not reached".into(), "not reached".into(), "not reached".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {:.2} % | {:.2} % | {} ({:.2} %) | {:.2} % | {:.2} % | {} | {:.3} s | {:.4} J | {:.1} s | {rounds} | {airtime} | {energy} |",
            o.algorithm,
            100.0 * o.final_mean_accuracy,
            100.0 * o.weighted_final_accuracy,
            o.selected.round,
            100.0 * o.selected.accuracy,
            100.0 * o.selected.test_accuracy,
            100.0 * o.worst_node_final_accuracy,
            bytes(o.wire_bytes_per_round_per_node as u64),
            o.airtime_s,
            o.energy_j,
            o.compute_cpu_s,
        );
    }
    let _ = writeln!(
        md,
        "\nEmulated time: {}, summed over the rounds; a node's time is its {}air time and wait for \
         its neighbours' messages. Accuracy is the mean over the nodes of each one's newest model.\n",
        match scenario.coordinator.round_policy {
            wdml_proto::RoundPolicy::Quorum => format!(
                "each round lasts until {} of its nodes finished, plus {} s (quorum), or its last node if sooner",
                scenario.coordinator.quorum, scenario.coordinator.grace_s
            ),
            wdml_proto::RoundPolicy::Deadline => format!(
                "each round lasts {} s (deadline), or until its last node finished if sooner",
                scenario.coordinator.deadline_s
            ),
            _ => "each round lasts as long as its slowest node (the nodes meet at the barrier)".to_string(),
        },
        if scenario.device_of(0).is_none() {
            "(no device profiles: the radio's time alone) "
        } else {
            "device compute, "
        }
    );
    let _ = writeln!(md, "| algorithm | emulated time | emulated time to target |");
    let _ = writeln!(md, "|---|---:|---:|");
    for o in outcomes {
        let to_target = o
            .emulated_to_target_s
            .map_or("not reached".into(), |s| format!("{s:.3} s"));
        let _ = writeln!(md, "| {} | {:.3} s | {to_target} |", o.algorithm, o.emulated_s);
    }
    if scenario.device_of(0).is_some() {
        // The question the radio's energy alone cannot answer: does the extra compute
        // of an algorithm eat its radio saving, on these devices?
        let devices: Vec<String> = (0..scenario.nodes.count)
            .filter_map(|k| scenario.device_of(k))
            .map(|d| d.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(
            md,
            "\nOn the emulated devices ({}): compute counted in FLOPs of training and inference \
             (evaluation excluded), at each device's speed and power; all nodes summed.\n",
            devices.join(", ")
        );
        let _ = writeln!(
            md,
            "| algorithm | work | device compute time | compute energy | radio energy | total energy |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for o in outcomes {
            let _ = writeln!(
                md,
                "| {} | {:.1} GFLOP | {:.1} s | {:.2} J | {:.4} J | {:.2} J |",
                o.algorithm,
                o.flops as f64 / 1e9,
                o.device_compute_s,
                o.compute_energy_j,
                o.energy_j,
                o.compute_energy_j + o.energy_j,
            );
        }
    }
    let _ = writeln!(md, "\nFinal test accuracy per node:\n");
    let _ = write!(md, "| node |");
    for o in outcomes {
        let _ = write!(md, " {} |", o.algorithm);
    }
    let _ = writeln!(md, "\n|---|{}", "---:|".repeat(outcomes.len()));
    let nodes = outcomes
        .iter()
        .map(|o| o.final_accuracy_per_node.len())
        .max()
        .unwrap_or(0);
    for node in 0..nodes {
        let _ = write!(md, "| {node} ({}) |", scenario.model_of(node as u32));
        for o in outcomes {
            let cell = o.final_accuracy_per_node.get(node).copied().flatten();
            let _ = write!(md, " {} |", cell.map_or("–".into(), |a| format!("{:.2} %", 100.0 * a)));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "\n![accuracy against rounds, energy and air time](comparison.svg)");
    md
}

fn plot(scenario: &Scenario, outcomes: &[Outcome]) -> Figure {
    let series = |x: fn(&CurvePoint) -> f64| -> Vec<Series> {
        outcomes
            .iter()
            .map(|o| {
                let points = o.curve.iter().map(|p| (x(p), 100.0 * p.mean_accuracy)).collect();
                Series::line(o.algorithm.clone(), algorithm_color(&o.algorithm), points)
            })
            .collect()
    };
    let panel = |title, x_label, x, x_unit, cost| Panel {
        title,
        x_label,
        y_label: "mean test accuracy, %",
        x,
        x_unit,
        y_unit: Unit::None,
        series: series(cost),
    };
    Figure {
        title: format!(
            "{}: {} nodes, {} channel",
            scenario.run.name, scenario.nodes.count, scenario.channel.preset
        ),
        panels: vec![
            panel("accuracy per round", "round", Scale::Rounds, Unit::None, |p| {
                f64::from(p.round)
            }),
            panel(
                "against energy (log)",
                "cumulative radio energy (all nodes)",
                Scale::Log,
                Unit::Joule,
                |p| p.cumulative_energy_j,
            ),
            panel(
                "against air time (log)",
                "cumulative air time (all nodes)",
                Scale::Log,
                Unit::Second,
                |p| p.cumulative_airtime_s,
            ),
        ],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_the_grid_of_its_fields_and_bare_words_are_strings() {
        let sweeps = parse_sweeps(&["exchange.public_batch=32,64".into(), "exchange.encoding=q8, q4".into()]).unwrap();
        assert_eq!(sweeps[1].1, ["\"q8\"", "\"q4\""]);
        let settings: Vec<String> = grid(&sweeps)
            .iter()
            .map(|s| s.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(settings, ["32 \"q8\"", "32 \"q4\"", "64 \"q8\"", "64 \"q4\""]);
        for bad in [
            vec!["exchange.public_batch".to_string()],
            vec!["a=1".into(), "b=2".into(), "c=3".into()],
            vec!["a=1".into(), "a=2".into()],
            vec!["a=1,1".into()],
            vec!["a=".into()],
        ] {
            assert!(parse_sweeps(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pareto_front_keeps_what_nothing_cheaper_beats() {
        let front = pareto(&[(4.0, 0.80), (1.0, 0.70), (2.0, 0.69), (3.0, 0.82), (3.0, 0.75)]);
        assert_eq!(front, [(1.0, 0.70), (3.0, 0.82)]);
    }

    /// An algorithm's outcome with these mean test accuracies per round (and, with
    /// `validation`, these on the validation set), its worst node 10 points below.
    pub(crate) fn outcome_with(algorithm: &str, accuracies: &[f64], validation: Option<&[f64]>) -> Outcome {
        let curve: Vec<CurvePoint> = accuracies
            .iter()
            .enumerate()
            .map(|(i, &mean_accuracy)| CurvePoint {
                round: i as u32 + 1,
                mean_accuracy,
                mean_validation_accuracy: validation.map(|v| v[i]),
                cumulative_energy_j: 0.0,
                cumulative_airtime_s: 0.0,
                cumulative_emulated_s: 0.0,
                wire_bytes_per_node: 0.0,
            })
            .collect();
        let last = *accuracies.last().unwrap();
        Outcome {
            algorithm: algorithm.into(),
            final_mean_accuracy: last,
            weighted_final_accuracy: last,
            selected: Selected::of(&curve, Basis::of(&curve)),
            worst_node_final_accuracy: last - 0.1,
            wire_bytes_per_round_per_node: 0.0,
            energy_j: 0.0,
            airtime_s: 0.0,
            compute_cpu_s: 0.0,
            flops: 0,
            device_compute_s: 0.0,
            compute_energy_j: 0.0,
            to_target: None,
            emulated_s: 0.0,
            emulated_to_target_s: None,
            curve,
            final_accuracy_per_node: Vec::new(),
        }
    }

    #[test]
    fn a_setting_has_one_name_everywhere() {
        let sweeps = parse_sweeps(&["exchange.public_batch=64".into(), "exchange.encoding=q4".into()]).unwrap();
        let setting = &grid(&sweeps)[0];
        assert_eq!(label(setting), "public_batch=64,encoding=q4");
        let point = SweepPoint {
            setting: setting.iter().cloned().collect(),
            algorithm: "dml".into(),
            final_mean_accuracy: 0.8,
            selected: Selected {
                basis: Basis::Validation,
                round: 3,
                accuracy: 0.81,
                test_accuracy: 0.8,
            },
            worst_node_final_accuracy: 0.7,
            wire_bytes_per_round_per_node: 1000.0,
            energy_j: 0.2,
            airtime_s: 0.5,
        };
        // The point's label, its terminal line and its figure label: the same name
        // (the setting map is sorted by field; the name keeps the sweeps' order).
        assert_eq!(point.label(&sweeps), "public_batch=64,encoding=q4");
        let scenario = Scenario::load(None, &[] as &[String]).unwrap();
        let points = [point];
        assert!(sweep_terminal(&sweeps, &points).contains("\npublic_batch=64,encoding=q4\n"));
        let svg = sweep_plot(&scenario, &sweeps, &points);
        assert!(
            svg.panels
                .iter()
                .all(|p| p.series[0].labels == ["public_batch=64,encoding=q4"])
        );
    }
}

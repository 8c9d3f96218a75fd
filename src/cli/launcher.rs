//! `wdml run`: the local launcher. Makes the run's certificates (an ephemeral CA in
//! the run directory), starts a coordinator and every node as child processes on
//! loopback, all over mutual TLS, shows the rounds as they close, and prints the final
//! table. Holds nothing of its own: the run directory is the coordinator's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wdml_coordinator::{Summary, bytes};
use wdml_proto::{RunEvent, WatchRequest, coordinator_client::CoordinatorClient, run_event};
use wdml_transport::pki::{self, Authority};
use wdml_transport::{Identity, Security};

use crate::scenario::Scenario;

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Scenario file (TOML); default: the built-in quickstart (examples/quickstart.toml).
    scenario: Option<PathBuf>,
    /// Run directory (default: a new directory under runs/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override any scenario field, e.g. --set train.local_steps=5 (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    overrides: Vec<String>,
    /// Shorthand for --set run.rounds=N.
    #[arg(long)]
    rounds: Option<u32>,
    /// Shorthand for --set run.algorithm=…: dml, local or fedavg.
    #[arg(long)]
    algorithm: Option<String>,
    /// Shorthand for --set run.seed=N.
    #[arg(long)]
    seed: Option<u64>,
    /// Shorthand for --set nodes.count=N.
    #[arg(long)]
    nodes: Option<u32>,
    /// Shorthand for --set data.dir=DIR, e.g. /usr/share/datasets/fashion-mnist.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    dir: RunDirArgs,
    /// Run every process without TLS (no encryption, no authentication): for debugging only.
    #[arg(long)]
    insecure: bool,
}

/// What to do with a run directory that already exists.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct RunDirArgs {
    /// Replace what an earlier run left in the run directory.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue the run in the run directory where it stopped (the coordinator from its
    /// journal, each node from its checkpoint).
    #[arg(long)]
    pub resume: bool,
}

impl RunDirArgs {
    /// Makes `out` ready for a run: new, replaced (`--overwrite`), or kept to continue
    /// (`--resume`). An earlier run is never replaced silently.
    pub fn prepare(&self, out: &Path) -> Result<()> {
        self.prepare_with(
            out,
            &["journal.jsonl", "config.json", "scenario.toml", "metrics.jsonl"],
            true,
        )
    }

    /// [`Self::prepare`] for a directory recognised by any of `markers` (files a
    /// WDML command writes there), by a command that can (`resumable`) or cannot
    /// continue a run: its refusals suggest only the flags it has.
    pub fn prepare_with(&self, out: &Path, markers: &[&str], resumable: bool) -> Result<()> {
        let occupied = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
        let looks_like_a_run = markers.iter().any(|f| out.join(f).exists());
        match (occupied, self.overwrite, self.resume) {
            (false, _, true) => bail!("--resume: {} holds no run to continue", out.display()),
            (true, _, true) if finished(out) => bail!(
                "--resume: the run in {} finished; there is nothing to continue (--overwrite replaces it)",
                out.display()
            ),
            (false, _, false) => {}
            (true, _, _) if !looks_like_a_run => bail!(
                "{} exists and is not a WDML run directory; give another --out",
                out.display()
            ),
            (true, true, _) => {
                std::fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?
            }
            (true, false, true) => {}
            (true, false, false) => bail!(
                "{} holds an earlier run; give another --out{}",
                out.display(),
                match resumable {
                    true => ", --overwrite to replace it, or --resume to continue it",
                    false => " or --overwrite to replace it",
                }
            ),
        }
        std::fs::create_dir_all(out.join("logs")).with_context(|| format!("cannot create {}", out.display()))
    }
}

/// Whether the run in `out` finished (its summary says so).
fn finished(out: &Path) -> bool {
    read_summary(out).is_ok_and(|s| s.finished)
}

/// The summary the coordinator wrote into `out`.
fn read_summary(out: &Path) -> Result<Summary> {
    // A summary is a few kilobytes (one entry per node).
    let text = wdml_files::read_bounded_text(&out.join("summary.json"), 64 << 20)
        .with_context(|| format!("the coordinator wrote no summary; see {}", out.join("logs").display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The launcher was stopped by a signal (ctrl-c: SIGINT); the process exits with the
/// conventional status, 128 + the signal.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub out: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted: the nodes left and the coordinator wrote the partial run to {} \
             (wdml run --resume --out {} continues it)",
            self.out.display(),
            self.out.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// How [`launch`] runs the processes.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub progress: Progress,
    /// No TLS anywhere (debugging).
    pub insecure: bool,
}

impl Args {
    /// Every `--set`, then the shorthand flags as `--set`s. A flag and a `--set` for the
    /// same field contradict each other: refused, naming both.
    fn overrides(&self) -> Result<Vec<String>> {
        let mut all = self.overrides.clone();
        let flags = [
            ("--rounds", "run.rounds", self.rounds.map(|v| v.to_string())),
            (
                "--algorithm",
                "run.algorithm",
                self.algorithm.as_ref().map(|v| format!("{v:?}")),
            ),
            ("--seed", "run.seed", self.seed.map(|v| v.to_string())),
            ("--nodes", "nodes.count", self.nodes.map(|v| v.to_string())),
            (
                "--data-dir",
                "data.dir",
                self.data_dir.as_ref().map(|v| format!("{:?}", v.display().to_string())),
            ),
        ];
        for (flag, field, value) in flags {
            let Some(value) = value else { continue };
            if let Some(set) = self
                .overrides
                .iter()
                .find(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == field))
            {
                bail!("{flag} {value} and --set {set} both set {field}: give one of them");
            }
            all.push(format!("{field}={value}"));
        }
        Ok(all)
    }
}

pub fn main(args: Args) -> Result<ExitCode> {
    // `--resume --out DIR` continues the run DIR holds: its own resolved scenario, unless
    // a scenario file is named; an override that contradicts it is refused (by the
    // coordinator, naming the field).
    let stored = match (&args.scenario, &args.out, args.dir.resume) {
        (None, Some(out), true) => Some(out.join("scenario.toml")).filter(|p| p.is_file()),
        _ => None,
    };
    let mut scenario = Scenario::load(stored.as_deref().or(args.scenario.as_deref()), &args.overrides()?)?;
    // Before the checks: they see the timeouts the run will have.
    if stored.is_none() {
        scale_timeouts(&mut scenario);
    }
    scenario.validate()?;
    scenario.preflight()?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => claim_run_dir(&scenario.run.name)?,
    };
    args.dir.prepare(&out)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let launch_options = Launch {
        progress: Progress::auto(),
        insecure: args.insecure,
    };
    let summary = runtime.block_on(launch(&scenario, &out, launch_options))?;
    println!("{}", summary.table());
    println!("run directory: {}", out.display());
    Ok(if summary.finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Many processes on few cores wait for a core for seconds at a time: on 2 cores, 256
/// nodes with the default timeouts lost 232 to the 3 s heartbeat timeout while the run
/// was called finished. Past 16 nodes a core, every timeout still at its default is
/// raised to what worked for 256 and 1,024 nodes on 2 cores (`examples/scale.toml`),
/// said on stderr and recorded in the run's scenario; one the user set is kept, and
/// named if it is shorter.
fn scale_timeouts(scenario: &mut Scenario) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_core = f64::from(scenario.nodes.count) / cores as f64;
    if per_core <= 16.0 {
        return;
    }
    let (defaults, exchange) = (
        crate::scenario::CoordinatorSection::default(),
        crate::scenario::ExchangeSection::default(),
    );
    let (c, e) = (&mut scenario.coordinator, &mut scenario.exchange);
    let fields: [(&str, &mut u64, u64, u64); 6] = [
        (
            "coordinator.round_timeout_ms",
            &mut c.round_timeout_ms,
            defaults.round_timeout_ms,
            600_000,
        ),
        (
            "coordinator.heartbeat_timeout_ms",
            &mut c.heartbeat_timeout_ms,
            defaults.heartbeat_timeout_ms,
            60_000,
        ),
        (
            "coordinator.join_timeout_ms",
            &mut c.join_timeout_ms,
            defaults.join_timeout_ms,
            900_000,
        ),
        (
            "coordinator.sync_timeout_ms",
            &mut c.sync_timeout_ms,
            defaults.sync_timeout_ms,
            900_000,
        ),
        (
            "exchange.connect_timeout_ms",
            &mut e.connect_timeout_ms,
            exchange.connect_timeout_ms,
            10_000,
        ),
        ("exchange.timeout_ms", &mut e.timeout_ms, exchange.timeout_ms, 120_000),
    ];
    let (mut raised, mut short) = (Vec::new(), Vec::new());
    for (field, value, default, scale) in fields {
        if *value == default && default < scale {
            *value = scale;
            raised.push(format!("{field} = {scale}"));
        } else if *value < scale {
            short.push(format!("{field} = {value} (examples/scale.toml: {scale})"));
        }
    }
    let nodes = scenario.nodes.count;
    if !raised.is_empty() {
        eprintln!(
            "{nodes} nodes on {cores} cores ({per_core:.0} a core): raised the default timeouts: {}",
            raised.join(", ")
        );
    }
    if !short.is_empty() {
        eprintln!(
            "warning: {nodes} nodes on {cores} cores wait for a core for seconds at a time; these timeouts are short for that: {}",
            short.join(", ")
        );
    }
}

/// A new, empty run directory `runs/<name>-<UTC date>-<time>`, made now: two runs
/// started in the same second get `…-2`, `…-3` (creating a directory is atomic, so
/// exactly one of them gets each name).
pub fn claim_run_dir(name: &str) -> Result<PathBuf> {
    let base = default_run_dir(name);
    std::fs::create_dir_all("runs").context("cannot create runs/")?;
    for n in 1u32.. {
        let dir = match n {
            1 => base.clone(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!("the loop returns")
}

/// `runs/<name>-<UTC date>-<time>` (to the second; [`claim_run_dir`] makes it unique).
pub fn default_run_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{name}-{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// How the launcher shows the rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on a terminal, a line per round otherwise.
    Auto,
    /// Nothing.
    Quiet,
}

impl Progress {
    pub fn auto() -> Self {
        Progress::Auto
    }
}

/// Runs `scenario` with its run directory at `out` (made ready by
/// [`RunDirArgs::prepare`]); returns the summary the coordinator wrote. Stopped by a
/// signal, it stops the nodes (they leave), then the coordinator (it writes the partial
/// run), and returns [`Interrupted`].
pub async fn launch(scenario: &Scenario, out: &Path, options: Launch) -> Result<Summary> {
    let progress = options.progress;
    // Only its own program can run an external model: without one the run would wait
    // for a join that never comes.
    if let Some(id) =
        (0..scenario.nodes.count).find(|&id| scenario.model_of(id).is_external() && scenario.program_of(id).is_none())
    {
        bail!(
            "nodes.programs: node {id} runs {}, a model of the device's own program, and no program \
             is given for it; add [[nodes.programs]] with ids = [{id}] and its command (docs/python.md), \
             or start it yourself against `wdml coordinator`",
            scenario.model_of(id)
        );
    }
    // The split needs the dataset: check it now rather than in every node.
    let dataset = wdml_node::data::Dataset::load_labels(&scenario.location())?;
    let split = scenario.split_config(scenario.public_from()?)?;
    // The split itself, as every node will draw it: a Dirichlet split can leave a node
    // below the minimum however the sizes look, and that is refused here, before any
    // process starts, rather than by every node after it joined.
    wdml_node::data::split(&dataset, &split).with_context(|| {
        format!(
            "nodes.count = {} with data.partition = {:?} cannot be split",
            scenario.nodes.count, scenario.data.partition
        )
    })?;
    drop(dataset);

    std::fs::create_dir_all(out.join("logs")).with_context(|| format!("cannot create {}", out.display()))?;
    let text = scenario.to_toml()?;
    let stored = out.join("scenario.toml");
    let scenario_file = match std::fs::read_to_string(&stored) {
        // A run being resumed keeps its own record: a scenario that differs reaches the
        // coordinator from elsewhere (it refuses it, naming the field), never over it.
        Ok(earlier) if earlier != text => {
            std::env::temp_dir().join(format!("wdml-scenario-{}.toml", std::process::id()))
        }
        _ => stored,
    };
    wdml_files::write_atomic(&scenario_file, text.as_bytes(), wdml_files::Mode::Public)?;
    let exe = std::env::current_exe().context("cannot find the wdml executable")?;
    // Every connection is mutual TLS, loopback included, under a CA made for this run
    // alone; its key is never written, so nobody can issue another certificate for it.
    let tls_dir = out.join("tls");
    let tls_args: Vec<String> = if options.insecure {
        wdml_transport::warn_insecure("this run");
        vec!["--insecure".into()]
    } else {
        let mut identities = vec![Identity::Coordinator, Identity::Observer];
        identities.extend((0..scenario.nodes.count).map(Identity::Node));
        ensure_certs(&tls_dir, &identities)?;
        vec!["--tls-dir".into(), tls_dir.display().to_string()]
    };
    let observer = if options.insecure {
        Security::Insecure
    } else {
        Security::from_dir(&tls_dir, Identity::Observer)?
    };

    let mut children = Children::default();
    let mut coordinator = Command::new(&exe);
    coordinator
        .arg("coordinator")
        .arg("--config")
        .arg(&scenario_file)
        .arg("--out")
        .arg(out)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(["--http", "127.0.0.1:0"])
        .args(&tls_args)
        .env_remove("WDML_SET")
        .env_remove("WDML_HTTP")
        .env_remove("WDML_INSECURE")
        .env_remove("WDML_TLS_DIR")
        .stdout(Stdio::piped())
        .stderr(log_file(out, "coordinator")?);
    let child = children.spawn("coordinator", coordinator, Group::Session)?;
    let address = match listening_address(child).await {
        Ok((address, dashboard)) => {
            let trust = match options.insecure {
                true => String::new(),
                false => format!(
                    "; the browser will not know the run's CA: trust {} or accept the warning",
                    tls_dir.join("ca.pem").display()
                ),
            };
            eprintln!(
                "dashboard: {dashboard} (live while the run goes on{trust}; `wdml view {}` reopens it)",
                out.display()
            );
            address
        }
        // Its reason is the last line of its log (a run directory it refused, say).
        Err(e) => {
            let log = std::fs::read_to_string(out.join("logs/coordinator.log")).unwrap_or_default();
            match log.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
                Some(reason) => bail!("the coordinator did not start: {reason}"),
                None => return Err(e.context("the coordinator did not start")),
            }
        }
    };

    let mut watch = watch_rounds(&address, &observer).await?;
    for id in 0..scenario.nodes.count {
        // A device that brings its own model runs its own program, told everything a
        // `wdml node` is told through the same WDML_* variables.
        if let Some(program) = scenario.program_of(id) {
            let mut device = Command::new(&program[0]);
            device
                .args(&program[1..])
                .env("WDML_NODE_ID", id.to_string())
                .env("WDML_MODEL", scenario.model_of(id).to_string())
                .env("WDML_COORDINATOR", &address)
                .env("WDML_LISTEN", "127.0.0.1:0")
                .env("WDML_THREADS", "1")
                .env_remove("WDML_INSECURE")
                .env_remove("WDML_TLS_DIR")
                .stdout(Stdio::null())
                .stderr(log_file(out, &format!("node-{id}"))?);
            match options.insecure {
                true => device.env("WDML_INSECURE", "true"),
                false => device.env("WDML_TLS_DIR", &tls_dir),
            };
            children
                .spawn_device(&format!("node-{id}"), device, scenario.nodes.count)
                .with_context(|| format!("nodes.programs: node {id}'s program {:?}", program[0]))?;
            continue;
        }
        let mut node = Command::new(&exe);
        node.arg("node")
            .args(["--id", &id.to_string()])
            .args(["--model", &scenario.model_of(id).to_string()])
            .args(["--coordinator", &address])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--threads", "1"])
            .arg("--state-dir")
            .arg(out.join("state").join(format!("node-{id}")))
            .args(&tls_args)
            .env_remove("WDML_INSECURE")
            .env_remove("WDML_TLS_DIR")
            .stdout(Stdio::null())
            .stderr(log_file(out, &format!("node-{id}"))?);
        children.spawn_device(&format!("node-{id}"), node, scenario.nodes.count)?;
    }

    let bar = progress_bar(scenario, progress);
    let began = std::sync::atomic::AtomicBool::new(false);
    let ended = tokio::select! {
        result = follow(&mut watch, &bar, progress, &began) => Ended::Followed(result),
        died = children.exit_before(&began) => Ended::Died(died),
        signal = crate::cli::signal() => Ended::Signal(signal),
    };
    let followed = match ended {
        Ended::Followed(result) => result,
        Ended::Signal(signal) => {
            bar.abandon_with_message("interrupted");
            // Nodes first, so the coordinator records them as having left; then the
            // coordinator, which writes the partial run.
            children.terminate_all().await;
            return Err(Interrupted {
                signal,
                out: out.to_path_buf(),
            }
            .into());
        }
        // A device that dies before the run begins (a program that cannot start, a
        // model it refuses) would otherwise cost the whole join timeout, unnamed.
        Ended::Died((name, status)) => {
            bar.abandon_with_message("a device died");
            children.terminate_all().await;
            let log = out.join("logs").join(format!("{name}.log"));
            let tail: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .map(str::to_string)
                .collect();
            let tail: Vec<&str> = tail.iter().rev().map(String::as_str).collect();
            bail!(
                "{name} exited ({status}) before the first round closed; its log, {}, ends:\n  {}",
                log.display(),
                tail.join("\n  ")
            );
        }
    };
    bar.finish_and_clear();
    children.wait_all(Duration::from_secs(15), true).await;
    followed?;
    read_summary(out)
}

/// A child's log, appended to (a resumed run keeps what came before).
fn log_file(out: &Path, name: &str) -> Result<std::fs::File> {
    let path = out.join("logs").join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Reads the `listening on ADDR` and `dashboard on URL` lines the coordinator prints
/// first.
async fn listening_address(child: &mut Child) -> Result<(String, String)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async |what: &str| -> Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("no answer within 30 s")??
            .context("it exited; see its log")?;
        let value = line
            .strip_prefix(what)
            .with_context(|| format!("unexpected line {line:?}"))?;
        Ok(value.trim().to_string())
    };
    let address = next("listening on ").await?;
    let dashboard = next("dashboard on ").await?;
    Ok((address, dashboard))
}

/// The coordinator's progress stream, as the run's observer.
async fn watch_rounds(address: &str, observer: &Security) -> Result<tonic::Streaming<RunEvent>> {
    let channel = observer.endpoint(address, Identity::Coordinator)?.connect().await?;
    Ok(CoordinatorClient::new(channel)
        .watch(WatchRequest {})
        .await?
        .into_inner())
}

fn progress_bar(scenario: &Scenario, progress: Progress) -> ProgressBar {
    if progress == Progress::Quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::from(scenario.run.rounds));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] round {pos}/{len} {msg} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let algorithm = scenario.run.algorithm;
    bar.set_prefix(format!(
        "{} {algorithm} × {} nodes",
        scenario.run.name, scenario.nodes.count
    ));
    bar.set_message("waiting for the nodes to join");
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Shows each closed round until the run finishes.
/// How following the run ended.
enum Ended {
    Followed(Result<()>),
    Died((String, std::process::ExitStatus)),
    Signal(i32),
}

/// Shows the rounds as they close, until the run finishes; sets `began` at the first.
async fn follow(
    watch: &mut tonic::Streaming<RunEvent>,
    bar: &ProgressBar,
    progress: Progress,
    began: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    while let Some(event) = watch.message().await? {
        match event.event {
            Some(run_event::Event::RoundClosed(r)) => {
                began.store(true, std::sync::atomic::Ordering::Relaxed);
                // One line of at most 80 columns.
                let line = format!(
                    "acc {:.1}% (worst {:.1}%), {}, air {:.1} ms, {:.2} mJ, {:.0} ms{}",
                    100.0 * r.mean_accuracy,
                    100.0 * r.min_accuracy,
                    bytes(r.wire_bytes),
                    1e3 * r.airtime_s,
                    1e3 * r.energy_j,
                    r.wall_ms,
                    if r.missing > 0 {
                        format!(", {} missing", r.missing)
                    } else {
                        String::new()
                    }
                );
                if bar.is_hidden() && progress == Progress::Auto {
                    eprintln!("round {}/{}: {line}", r.round, r.rounds);
                }
                bar.set_position(u64::from(r.round));
                bar.set_message(line);
            }
            Some(run_event::Event::RunFinished(_)) => return Ok(()),
            None => {}
        }
    }
    bail!("the coordinator closed the progress stream before the run finished")
}

/// The niceness `wdml run` gives its devices (Children::spawn_device): 10 (a tenth of
/// the coordinator's CPU weight), and 19 (a seventieth) beyond 64 devices. While the
/// devices work, the coordinator gets about 1024 / (1024 + devices × their weight) of a
/// core, and a round's start is a millisecond of its CPU: at niceness 10 that was 3.5 %
/// with 256 devices, and its gap between rounds 33 ms (100 ms at most); at 19 it is
/// 21 %. Up to 64 devices niceness 10 kept the gap under 8 ms, and leaves the devices
/// a fairer share beside the machine's other work (a test suite's, say).
#[cfg(target_os = "linux")]
fn device_niceness(devices: u32) -> libc::c_int {
    if devices <= 64 { 10 } else { 19 }
}

/// Where a child process starts: in a process group of its own, or (the coordinator)
/// in a session of its own.
///
/// Linux's scheduler shares the CPU fairly between sessions first where autogroup is on
/// (`kernel.sched_autogroup_enabled`, the default of most distributions), then between
/// the threads of each. In the launcher's session the coordinator was one thread among
/// hundreds of niced devices, and after its burst of work on a round's reports the
/// scheduler held it back until they had caught up: `perf sched` over a 24.5 ms gap of
/// 256 full-mesh nodes on 2 cores showed its thread runnable for 21 ms while niceness-19
/// devices ran. In a session of its own it is one of two equal shares on each core.
#[derive(Clone, Copy)]
enum Group {
    Process,
    Session,
}

/// The launcher's child processes; all killed if the launcher drops them.
#[derive(Default)]
struct Children {
    procs: Vec<(String, Child)>,
}

impl Children {
    /// Spawns a device (a node, or a program with its own model) as background batch
    /// work: on Linux `SCHED_BATCH` (a device that wakes does not preempt the process
    /// running) at the niceness [`device_niceness`] says. A round's start
    /// wakes every device at once, and the coordinator, which paces them all, then had
    /// to wait for a core: its gap between rounds (64 nodes on 2 cores) was 7–38 ms, the
    /// StartRounds themselves taking under 1 ms of CPU.
    ///
    /// Transparent huge pages are off for devices (`PR_SET_THP_DISABLE`, kept across
    /// exec): mimalloc asks for them on its arena, and a node with an `mlp:16` then held
    /// 55–57 MB of anonymous memory, 33–41 MB of it in huge pages, against 11–14 MB
    /// without (32 `k_nearest` nodes of `examples/scale.toml`, 2-core Intel Xeon VM).
    fn spawn_device(&mut self, name: &str, mut command: Command, devices: u32) -> Result<&mut Child> {
        #[cfg(target_os = "linux")]
        let niceness = device_niceness(devices);
        #[cfg(not(target_os = "linux"))]
        let _ = devices;
        // SAFETY: sched_setscheduler, setpriority and prctl are plain system calls
        // (async-signal-safe) on the child itself; should one fail, the device runs as
        // an ordinary process.
        #[cfg(target_os = "linux")]
        unsafe {
            command.pre_exec(move || {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
                libc::setpriority(libc::PRIO_PROCESS, 0, niceness);
                libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
                Ok(())
            });
        }
        self.spawn(name, command, Group::Process)
    }

    fn spawn(&mut self, name: &str, mut command: Command, group: Group) -> Result<&mut Child> {
        command.kill_on_drop(true);
        #[cfg(unix)]
        {
            // Its own process group (a new session makes one too): a ctrl-c at the
            // terminal reaches the launcher alone, which stops the children in order
            // (nodes, then the coordinator).
            match group {
                Group::Process => {
                    command.process_group(0);
                }
                // SAFETY: setsid is async-signal-safe. Should it fail, the child would
                // stay in the launcher's process group (and get its ctrl-c): it does
                // not start.
                Group::Session => unsafe {
                    command.pre_exec(|| match libc::setsid() {
                        -1 => Err(std::io::Error::last_os_error()),
                        _ => Ok(()),
                    });
                },
            }
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to send the
            // child SIGTERM should the launcher die without stopping it (kill -9).
            #[cfg(target_os = "linux")]
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let child = command.spawn().with_context(|| format!("cannot start the {name}"))?;
        self.procs.push((name.to_string(), child));
        Ok(&mut self.procs.last_mut().expect("just pushed").1)
    }

    /// Waits for every child to exit by itself, killing those that outlive `grace`;
    /// with `report`, says which ones failed.
    /// The first device that fails (exits non-zero, or is killed) before `began` is set
    /// (the run's first round closed), with its status; pending forever once the run has begun, when a device
    /// that leaves (its round failed, say) is the run's business, not the launcher's.
    async fn exit_before(&mut self, began: &std::sync::atomic::AtomicBool) -> (String, std::process::ExitStatus) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !began.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            for (name, child) in &mut self.procs {
                // Status 0 is a device done with a run that ended (a one-round run can
                // end before its first round's event reaches the launcher).
                if name != "coordinator"
                    && let Ok(Some(status)) = child.try_wait()
                    && !status.success()
                {
                    return (name.clone(), status);
                }
            }
        }
        std::future::pending().await
    }

    async fn wait_all(&mut self, grace: Duration, report: bool) {
        let deadline = tokio::time::Instant::now() + grace;
        for (name, child) in &mut self.procs {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) if !status.success() && report => eprintln!("{name} exited with {status}"),
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{name} did not exit in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Stops the nodes (SIGTERM: each tells the coordinator it leaves), then the
    /// coordinator (it writes its summary), and waits for all of them.
    async fn terminate_all(&mut self) {
        let (coordinator, nodes): (Vec<_>, Vec<_>) = std::mem::take(&mut self.procs)
            .into_iter()
            .partition(|(name, _)| name == "coordinator");
        for group in [nodes, coordinator] {
            for (_, child) in &group {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on a pid we spawned and have not reaped.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
            }
            self.procs = group;
            self.wait_all(Duration::from_secs(10), false).await;
        }
    }
}

/// Certificates for `identities` in `dir` under a CA made for this run (or comparison)
/// alone, unless the directory has them already; the CA's key is never written, so
/// nobody can issue another certificate under it.
pub(crate) fn ensure_certs(dir: &Path, identities: &[Identity]) -> Result<()> {
    // Certificates made for an earlier stretch of this run that are about to expire (a
    // run resumed weeks later) are made anew, under a new CA: `wdml run` starts every
    // process, so all of them get the new ones (the old CA's key was never written).
    let age = std::fs::metadata(dir.join("ca.pem"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if let Some(age) = age
        && age + Duration::from_secs(86_400) > pki::DEFAULT_VALIDITY
    {
        eprintln!(
            "the run's certificates in {} are {} days old and last {}: making them anew under a new CA",
            dir.display(),
            age.as_secs() / 86_400,
            pki::DEFAULT_VALIDITY.as_secs() / 86_400
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    if !dir.join("ca.pem").exists() {
        let authority = Authority::generate(pki::DEFAULT_VALIDITY)?;
        pki::write_dir(dir, &authority, identities, pki::DEFAULT_VALIDITY, false)?;
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn two_runs_started_in_the_same_second_get_directories_of_their_own() {
        let name = format!("claim-test-{}", std::process::id());
        let first = claim_run_dir(&name).unwrap();
        let second = claim_run_dir(&name).unwrap();
        let (a, b) = (first.display().to_string(), second.display().to_string());
        let _ = std::fs::remove_dir(&first);
        let _ = std::fs::remove_dir(&second);
        assert_ne!(a, b);
        // Within a second of each other (almost always the same one): the second is
        // the first with a suffix.
        assert!(b.starts_with(&a) || b.ends_with("-2") || !b.contains(&name), "{a} {b}");
    }

    #[test]
    fn crowded_runs_get_the_timeouts_that_worked_at_scale_unless_the_user_set_them() {
        let mut scenario = Scenario::load(None, &["nodes.count=4096".into()]).unwrap();
        scenario.coordinator.heartbeat_timeout_ms = 5_000;
        scale_timeouts(&mut scenario);
        assert_eq!(
            scenario.coordinator.heartbeat_timeout_ms, 5_000,
            "the user's own is kept"
        );
        assert_eq!(scenario.coordinator.join_timeout_ms, 900_000);
        assert_eq!(scenario.exchange.connect_timeout_ms, 10_000);
        assert_eq!(scenario.exchange.timeout_ms, 120_000);
        scenario.validate().unwrap();
        // The quickstart's four nodes keep every default.
        let mut small = Scenario::load(None, &[]).unwrap();
        scale_timeouts(&mut small);
        assert_eq!(small, Scenario::load(None, &[]).unwrap());
    }

    #[test]
    fn certificates_about_to_expire_are_made_anew_for_a_resumed_run() {
        let dir = std::env::temp_dir().join(format!("wdml-certs-renew-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let identities = [Identity::Coordinator, Identity::Node(0)];
        ensure_certs(&dir, &identities).unwrap();
        let first = std::fs::read(dir.join("ca.pem")).unwrap();
        ensure_certs(&dir, &identities).unwrap();
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), first, "fresh ones are kept");
        // Written 29.5 days ago: within a day of their 30.
        let then = std::time::SystemTime::now() - Duration::from_secs(29 * 86_400 + 43_200);
        std::fs::File::options()
            .write(true)
            .open(dir.join("ca.pem"))
            .unwrap()
            .set_modified(then)
            .unwrap();
        ensure_certs(&dir, &identities).unwrap();
        let renewed = std::fs::read(dir.join("ca.pem")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_ne!(renewed, first, "a new CA");
    }

    /// The coordinator starts in a session of its own (its own share of the CPU where
    /// the kernel groups by session), a device in the launcher's: read back from
    /// `/proc/self/stat` by a probe started each way.
    #[tokio::test]
    async fn the_coordinator_has_a_session_of_its_own() {
        for (group, own_session) in [(Group::Session, true), (Group::Process, false)] {
            let mut children = Children::default();
            let child = children
                .spawn("probe", probe(&["/proc/self/stat"]), group)
                .expect("cat starts");
            let out = output(child).await;
            let pid = out.split_whitespace().next().expect("pid");
            let fields = stat_fields(&out);
            assert_eq!(fields[5 - 3], pid, "a process group of its own in {out}");
            assert_eq!(fields[6 - 3] == pid, own_session, "session in {out}");
        }
    }

    /// `cat` of `files`, its output piped.
    fn probe(files: &[&str]) -> Command {
        let mut probe = Command::new("cat");
        probe.args(files).stdout(Stdio::piped());
        probe
    }

    async fn output(child: &mut Child) -> String {
        let mut out = String::new();
        let mut stdout = child.stdout.take().expect("piped");
        stdout.read_to_string(&mut out).await.expect("reads");
        out
    }

    /// The fields of a `/proc/<pid>/stat` line after the command's ")": field 3
    /// (state) at index 0 (proc(5): 5 the process group, 6 the session, 19 the
    /// niceness, 41 the scheduling policy).
    fn stat_fields(stat: &str) -> Vec<&str> {
        stat.rsplit_once(')').expect("comm").1.split_whitespace().collect()
    }

    /// What the machine's devices share it by: each runs as niced batch work without
    /// transparent huge pages, read back from the kernel by a device of its own.
    #[tokio::test]
    async fn a_device_runs_as_niced_batch_work_without_huge_pages() {
        for (devices, niceness) in [(4, "10"), (64, "10"), (65, "19"), (1024, "19")] {
            let mut children = Children::default();
            let files = probe(&["/proc/self/status", "/proc/self/stat"]);
            let child = children.spawn_device("probe", files, devices).expect("cat starts");
            let out = output(child).await;
            assert!(out.contains("THP_enabled:\t0"), "huge pages still on:\n{out}");
            let stat = out.lines().last().expect("stat line");
            let fields = stat_fields(stat);
            assert_eq!(fields[19 - 3], niceness, "{devices} devices: niceness in {stat}");
            assert_eq!(fields[41 - 3], libc::SCHED_BATCH.to_string(), "policy in {stat}");
        }
    }
}

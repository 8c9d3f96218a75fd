//! `wdml run`: the local launcher. Starts a coordinator and every node as child
//! processes on loopback, shows the rounds as they close, and prints the final
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

use crate::scenario::{AlgorithmName, Scenario};

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
}

impl Args {
    fn overrides(&self) -> Vec<String> {
        let mut all = self.overrides.clone();
        let mut add = |field: &str, value: Option<String>| {
            if let Some(v) = value {
                all.push(format!("{field}={v}"));
            }
        };
        add("run.rounds", self.rounds.map(|v| v.to_string()));
        add("run.algorithm", self.algorithm.as_ref().map(|v| format!("{v:?}")));
        add("run.seed", self.seed.map(|v| v.to_string()));
        add("nodes.count", self.nodes.map(|v| v.to_string()));
        add(
            "data.dir",
            self.data_dir.as_ref().map(|v| format!("{:?}", v.display().to_string())),
        );
        all
    }
}

pub fn main(args: Args) -> Result<ExitCode> {
    let scenario = Scenario::load(args.scenario.as_deref(), &args.overrides())?;
    let out = args.out.clone().unwrap_or_else(|| default_run_dir(&scenario.run.name));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(launch(&scenario, &out, Progress::auto()))?;
    println!("{}", summary.table());
    println!("run directory: {}", out.display());
    Ok(if summary.finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `runs/<name>-<UTC date>-<time>`, unique per second.
fn default_run_dir(name: &str) -> PathBuf {
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

/// Runs `scenario` with its run directory at `out`; returns the summary the
/// coordinator wrote.
pub async fn launch(scenario: &Scenario, out: &Path, progress: Progress) -> Result<Summary> {
    // The split needs the dataset: check it now rather than in every node.
    let dataset = wdml_node::data::Dataset::load(scenario.data.dir.as_deref())?;
    let split = wdml_node::data::SplitConfig {
        seed: scenario.run.seed,
        nodes: scenario.nodes.count as usize,
        partition: scenario.data.partition.parse()?,
        public_pool: scenario.data.public_pool as usize,
        test_size: scenario.data.test_size as usize,
    };
    split.validate(&dataset)?;
    drop(dataset);

    std::fs::create_dir_all(out.join("logs")).with_context(|| format!("cannot create {}", out.display()))?;
    let scenario_file = out.join("scenario.toml");
    std::fs::write(&scenario_file, scenario.to_toml()?)?;
    let exe = std::env::current_exe().context("cannot find the wdml executable")?;

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
        .env_remove("WDML_SET")
        .stdout(Stdio::piped())
        .stderr(log_file(out, "coordinator")?);
    let child = children.spawn("coordinator", coordinator)?;
    let address = listening_address(child)
        .await
        .context("the coordinator did not start")?;

    let mut watch = watch_rounds(&address).await?;
    for id in 0..scenario.nodes.count {
        let mut node = Command::new(&exe);
        node.arg("node")
            .args(["--id", &id.to_string()])
            .args(["--model", &scenario.model_of(id).to_string()])
            .args(["--coordinator", &address])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--threads", "1"])
            .stdout(Stdio::null())
            .stderr(log_file(out, &format!("node-{id}"))?);
        children.spawn(&format!("node-{id}"), node)?;
    }

    let bar = progress_bar(scenario, progress);
    let followed = tokio::select! {
        result = follow(&mut watch, &bar, progress) => result,
        () = crate::cli::shutdown_signal() => {
            bar.abandon_with_message("interrupted");
            children.terminate_all().await;
            bail!("interrupted: every process was stopped; the partial run is in {}", out.display());
        }
    };
    bar.finish_and_clear();
    children.wait_all(Duration::from_secs(15)).await;
    followed?;
    let summary = std::fs::read_to_string(out.join("summary.json"))
        .with_context(|| format!("the coordinator wrote no summary; see {}", out.join("logs").display()))?;
    Ok(serde_json::from_str(&summary)?)
}

fn log_file(out: &Path, name: &str) -> Result<std::fs::File> {
    let path = out.join("logs").join(format!("{name}.log"));
    std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

/// Reads the `listening on ADDR` line a server prints first.
async fn listening_address(child: &mut Child) -> Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("no answer within 30 s")??
        .context("it exited; see its log")?;
    let address = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok(address.trim().to_string())
}

async fn watch_rounds(address: &str) -> Result<tonic::Streaming<RunEvent>> {
    let mut client = CoordinatorClient::connect(format!("http://{address}")).await?;
    Ok(client.watch(WatchRequest {}).await?.into_inner())
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
    let algorithm = match scenario.run.algorithm {
        AlgorithmName::Dml => "dml",
        AlgorithmName::Local => "local",
        AlgorithmName::Fedavg => "fedavg",
    };
    bar.set_prefix(format!(
        "{} {algorithm} × {} nodes",
        scenario.run.name, scenario.nodes.count
    ));
    bar.set_message("waiting for the nodes to join");
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Shows each closed round until the run finishes.
async fn follow(watch: &mut tonic::Streaming<RunEvent>, bar: &ProgressBar, progress: Progress) -> Result<()> {
    while let Some(event) = watch.message().await? {
        match event.event {
            Some(run_event::Event::RoundClosed(r)) => {
                let line = format!(
                    "mean acc {:.1}%, worst {:.1}%, {} on the wire, airtime {:.1} ms, {:.2} mJ, {:.0} ms{}",
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
                    eprintln!("round {}/{}: {line}", r.round + 1, r.rounds);
                }
                bar.set_position(u64::from(r.round + 1));
                bar.set_message(line);
            }
            Some(run_event::Event::RunFinished(_)) => return Ok(()),
            None => {}
        }
    }
    bail!("the coordinator closed the progress stream before the run finished")
}

/// The launcher's child processes; all killed if the launcher drops them.
#[derive(Default)]
struct Children {
    procs: Vec<(String, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &str, mut command: Command) -> Result<&mut Child> {
        let child = command
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        self.procs.push((name.to_string(), child));
        Ok(&mut self.procs.last_mut().expect("just pushed").1)
    }

    /// Waits for every child to exit by itself, killing those that outlive `grace`.
    async fn wait_all(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for (name, child) in &mut self.procs {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) if !status.success() => eprintln!("{name} exited with {status}"),
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{name} did not exit in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Asks every child to stop (SIGTERM: nodes leave, the coordinator writes its
    /// summary), then waits.
    async fn terminate_all(&mut self) {
        for (_, child) in &self.procs {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on a pid we spawned and have not reaped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        self.wait_all(Duration::from_secs(10)).await;
    }
}

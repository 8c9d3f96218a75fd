//! The golden run: the quickstart's first three rounds, compared field by field and bit
//! for bit with `tests/golden/quickstart.jsonl`, once on this CPU's own kernels and once
//! on the portable ones (`WDML_KERNELS=portable`, the path of every CPU without
//! AVX-512). Every seeded figure of the project follows from these rows: a change that
//! moves one bit of a loss, an accuracy, a byte count, an emulated second or a joule
//! fails here, at the commit that made it.
//!
//! Compared: every field of every row of `metrics.jsonl` except those measured on the
//! wall or CPU clock (declared `clock` in coordinator/src/metrics.rs), which move with the
//! machine's load. Floats are
//! compared as the JSON the coordinator wrote, which round-trips to the bit.
//!
//! The contract (docs/determinism.md): the same bits on every x86-64 CPU with FMA, with
//! or without AVX-512. On another CPU the test says SKIPPED.
//!
//! A change that *should* move the figures (a new default, a fixed bug) rewrites the
//! file on purpose: `WDML_BLESS=1 cargo test --release --test golden`, and the diff of
//! `tests/golden/quickstart.jsonl` goes into the commit, explained.
//!
//! Below them, the README's figures: the quickstart's final tables and the accuracies
//! the README quotes (local, the capped split), against fresh runs of the whole
//! quickstart; a number edited in the README, or moved by a change, fails there.

mod common;

use std::path::{Path, PathBuf};

use common::{TempDir, WDML};
use serde_json::{Map, Value};
use wdml_coordinator::metrics;

/// Rounds of the golden run: enough for a model to move and for every node to have heard
/// its neighbours' predictions of an earlier round.
const ROUNDS: &str = "3";

fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quickstart.jsonl")
}

/// Whether this CPU is one the golden bits are promised on.
fn covered() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The quickstart's first rounds on the given kernels, each row without its clock
/// fields, in (round, node) order.
fn run(kernels: &str) -> Vec<Map<String, Value>> {
    let (dir, _) = launch(&format!("golden-{kernels}"), &["--rounds", ROUNDS], Some(kernels));
    let path = dir.path().join("run/metrics.jsonl");
    let text = std::fs::read_to_string(path).expect("metrics.jsonl");
    let mut rows: Vec<Map<String, Value>> = text
        .lines()
        .map(|line| strip(serde_json::from_str(line).unwrap()))
        .collect();
    rows.sort_by_key(|row| (row["round"].as_u64(), row["node"].as_u64()));
    rows
}

/// `wdml run` of the quickstart without the emulated waits, with `extra` arguments and,
/// if given, `WDML_KERNELS=kernels`, into `run/` of the directory it returns (with
/// what the run printed on stdout); a failed run panics with its logs.
fn launch(label: &str, extra: &[&str], kernels: Option<&str>) -> (TempDir, String) {
    let dir = TempDir::new(label);
    let out = dir.path().join("run");
    let mut command = std::process::Command::new(WDML);
    command
        .args(["run", "--set", "channel.time_scale=0"])
        .args(extra)
        .arg("--out")
        .arg(&out);
    if let Some(kernels) = kernels {
        command.env("WDML_KERNELS", kernels);
    }
    let output = command.output().expect("wdml runs");
    if !output.status.success() {
        common::dump_logs(&out);
        panic!(
            "the quickstart ({label}) failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (dir, String::from_utf8(output.stdout).expect("UTF-8"))
}

fn strip(row: Value) -> Map<String, Value> {
    let Value::Object(mut row) = row else {
        panic!("a metrics row is a JSON object: {row}")
    };
    for metric in metrics::METRICS.iter().filter(|m| m.clock) {
        assert!(
            row.remove(metric.name).is_some(),
            "metrics rows have no `{}`",
            metric.name
        );
    }
    row
}

fn check(kernels: &str) {
    if !covered() {
        eprintln!("SKIPPED: golden run ({kernels}): its bits are promised on x86-64 CPUs with FMA only");
        return;
    }
    let path = golden_path();
    let bless = std::env::var_os("WDML_BLESS").is_some();
    if bless && kernels != "native" {
        // The file is written from the native run alone (the two tests run at once).
        eprintln!("golden run ({kernels}): not compared while WDML_BLESS rewrites the file");
        return;
    }
    let got = run(kernels);
    if bless {
        let text: String = got
            .iter()
            .map(|row| format!("{}\n", Value::Object(row.clone())))
            .collect();
        // Written whole, then renamed: a cut write never leaves a half golden file.
        let partial = path.with_extension("jsonl.partial");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        eprintln!("wrote {} ({} rows)", path.display(), got.len());
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let want: Vec<Map<String, Value>> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let mut differences = Vec::new();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let fields = w.keys().chain(g.keys().filter(|k| !w.contains_key(*k)));
        for field in fields {
            if g.get(field) != w.get(field) {
                differences.push(format!(
                    "row {i} (round {}, node {}): {field}: got {}, golden {}",
                    w["round"],
                    w["node"],
                    g.get(field).map_or("(absent)".into(), Value::to_string),
                    w.get(field).map_or("(absent)".into(), Value::to_string),
                ));
            }
        }
    }
    assert!(
        got.len() == want.len() && differences.is_empty(),
        "the quickstart's rows moved on the {kernels} kernels ({} rows, golden {}); if that is intended, \
         rerun with WDML_BLESS=1 and explain the diff in the commit:\n{}",
        got.len(),
        want.len(),
        differences.join("\n")
    );
}

#[test]
fn the_quickstart_reproduces_its_golden_rows_bit_for_bit() {
    check("native");
}

#[test]
fn the_portable_kernels_give_the_same_bits() {
    check("portable");
}

// The README's figures: the quickstart's seeded numbers, as printed there, against a
// fresh run of the whole quickstart. Its accuracies, byte counts, losses, air time and
// energy follow from the seed (the rows above, bit for bit); its wall and CPU times do
// not, and are not compared. A number edited in the README, or a change that moves
// one, fails here: rerun the command the README names and paste what it prints.

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The whole quickstart (`wdml run`, with `extra`), without the emulated waits: what it
/// prints on stdout.
fn quickstart(label: &str, extra: &[&str]) -> String {
    launch(&format!("readme-{label}"), extra, None).1
}

/// The final tables: from the line `run quickstart-…` to the line `mean final accuracy …`.
fn final_tables(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("run quickstart-"))
        .unwrap_or_else(|| panic!("no `run quickstart-…` line in\n{text}"));
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.starts_with("mean final accuracy"))
            .unwrap_or_else(|| panic!("no `mean final accuracy` line in\n{text}"));
    lines[start..=end].to_vec()
}

/// A line of the final tables without what the clock measured: the first line up to its
/// duration; a row of the costs table up to its energy (compute, exchange and wait are
/// wall and CPU times); every other line whole.
fn seeded(line: &str, in_costs: bool) -> String {
    if line.starts_with("run ") {
        return line.split(" in ").next().unwrap_or(line).to_string();
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let is_row = words.first().is_some_and(|w| w.parse::<u32>().is_ok());
    if in_costs && is_row {
        // node, wire sent (number, unit), lost, air time (number, unit), energy (number, unit)
        return words[..8.min(words.len())].join(" ");
    }
    words.join(" ")
}

/// `mean final accuracy 76.17%, median 75.70%, worst node 72.60%`: mean and worst.
fn mean_and_worst(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("mean final accuracy"))
        .unwrap_or_else(|| panic!("no summary line in\n{stdout}"));
    let percent = |after: &str| -> f64 {
        let rest = &line[line.find(after).unwrap_or_else(|| panic!("{after:?} in {line}")) + after.len()..];
        rest.trim_start().split('%').next().unwrap().parse().unwrap()
    };
    (percent("mean final accuracy"), percent("worst node"))
}

/// `text` with every run of whitespace (line breaks included) one space.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_readmes_quickstart_tables_are_what_a_fresh_run_prints() {
    if !covered() {
        eprintln!("SKIPPED: README figures: the seeded figures are promised on x86-64 CPUs with FMA only");
        return;
    }
    let readme = readme();
    let printed = readme
        .split("```text\n")
        .find(|block| block.starts_with("run quickstart-"))
        .expect("README.md shows the quickstart's final tables in a ```text block");
    let printed = &printed[..printed.find("```").expect("the block ends")];
    let stdout = quickstart("dml", &[]);
    let (want, got) = (final_tables(printed), final_tables(&stdout));
    let mut in_costs = false;
    let mut differences = Vec::new();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        in_costs |= w.contains("wire sent");
        let (w, g) = (seeded(w, in_costs), seeded(g, in_costs));
        if w != g {
            differences.push(format!("line {}:\n  README: {w}\n  run:    {g}", i + 1));
        }
    }
    assert!(
        want.len() == got.len() && differences.is_empty(),
        "README.md's quickstart tables are not what `wdml run` prints now ({} lines, the run {}):\n{}\n\
         the run printed:\n{}",
        want.len(),
        got.len(),
        differences.join("\n"),
        got.join("\n")
    );

    // The same devices learning alone, and the difference the README draws from it.
    let (dml_mean, dml_worst) = mean_and_worst(&stdout);
    let (local_mean, local_worst) = mean_and_worst(&quickstart("local", &["--algorithm", "local"]));
    let readme = flat(&readme);
    for claim in [
        format!(
            "reach {local_mean:.2} % mean and {local_worst:.2} % for the worst node (`wdml run --algorithm local`)"
        ),
        format!(
            "is worth about {:.0} points of mean and {:.0} of worst-node accuracy",
            dml_mean - local_mean,
            dml_worst - local_worst
        ),
    ] {
        assert!(readme.contains(&claim), "README.md does not say: {claim}");
    }
}

#[test]
fn the_readmes_capped_split_figures_are_what_a_fresh_run_prints() {
    if !covered() {
        eprintln!("SKIPPED: README figures: the seeded figures are promised on x86-64 CPUs with FMA only");
        return;
    }
    let capped = ["--set", "data.partition=\"dirichlet-balanced:0.5\""];
    let (dml_mean, dml_worst) = mean_and_worst(&quickstart("capped-dml", &capped));
    let local = [&capped[..], &["--algorithm", "local"]].concat();
    let (local_mean, local_worst) = mean_and_worst(&quickstart("capped-local", &local));
    let claim = format!(
        "the gap is about {:.0} points (dml {dml_mean:.2} % / {dml_worst:.2} %, local {local_mean:.2} % / {local_worst:.2} %)",
        dml_mean - local_mean
    );
    assert!(flat(&readme()).contains(&claim), "README.md does not say: {claim}");
}

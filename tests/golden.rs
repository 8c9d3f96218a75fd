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
    let dir = TempDir::new(&format!("golden-{kernels}"));
    let out = dir.path().join("run");
    let output = std::process::Command::new(WDML)
        .args(["run", "--rounds", ROUNDS, "--set", "channel.time_scale=0", "--out"])
        .arg(&out)
        .env("WDML_KERNELS", kernels)
        .output()
        .expect("wdml runs");
    if !output.status.success() {
        common::dump_logs(&out);
        panic!(
            "the quickstart failed on the {kernels} kernels: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    let mut rows: Vec<Map<String, Value>> = text
        .lines()
        .map(|line| strip(serde_json::from_str(line).unwrap()))
        .collect();
    rows.sort_by_key(|row| (row["round"].as_u64(), row["node"].as_u64()));
    rows
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

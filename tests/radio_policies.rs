//! Radio resource policies, done with real processes: what `policy.jsonl` says each
//! round is what the nodes did on their real streams. A pairing is a matching and its
//! partners are the only ones that get a message; power control spends less energy
//! than full power on the same transmissions; on a shared band the turns follow the
//! order asked for and each lasts exactly the air time its node spent; bad settings are
//! refused naming the field.

mod common;

use common::{TempDir, launch, metrics, small_mesh};
use wdml_coordinator::{Decisions, MetricsRow, POLICY_FILE};

const NODES: u32 = 6;
const ROUNDS: u32 = 4;

/// Six `small` nodes on the d2d-urban radio in a 100 m square (links of different
/// quality), no frame losses (every message sent arrives unless its link is in outage),
/// nothing waits. An `extra` `channel.area_m` replaces the square.
fn radio(extra: &[&str]) -> Vec<String> {
    let mut overrides = small_mesh(NODES, ROUNDS);
    overrides.retain(|o| !o.starts_with("channel.area_m"));
    if !extra.iter().any(|o| o.starts_with("channel.area_m")) {
        overrides.push("channel.area_m=100".into());
    }
    overrides.push("channel.time_scale=0".into());
    overrides.extend(extra.iter().map(|o| o.to_string()));
    overrides
}

/// The run's rows and its policy record (empty when it wrote none).
fn run(label: &str, extra: &[&str]) -> (Vec<MetricsRow>, Vec<Decisions>) {
    let dir = TempDir::new(&format!("radio-policy-{label}"));
    assert!(launch(dir.path(), &radio(extra)).status.success(), "{label}");
    let path = dir.path().join(POLICY_FILE);
    let decisions = match path.exists() {
        true => std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a policy line"))
            .collect(),
        false => Vec::new(),
    };
    (metrics(dir.path()), decisions)
}

/// The radio's energy at both ends, all nodes, the whole run.
fn radio_energy(rows: &[MetricsRow]) -> f64 {
    rows.iter().map(|r| r.metrics.tx_energy_j + r.metrics.rx_energy_j).sum()
}

/// Every round's receivers are symmetric (`j` gets `i`'s message exactly when `i` gets
/// `j`'s), and each node's metrics count exactly the messages its decision says: sent
/// to its receivers and received from them, none from anyone else.
fn check_against_the_wire(rows: &[MetricsRow], decisions: &[Decisions]) {
    assert_eq!(decisions.len(), ROUNDS as usize);
    for decision in decisions {
        assert_eq!(decision.senders.len(), NODES as usize, "round {}", decision.round);
        let receivers = |node: u32| &decision.senders.iter().find(|s| s.node == node).unwrap().receivers;
        for sender in &decision.senders {
            for &j in &sender.receivers {
                assert!(
                    receivers(j).contains(&sender.node),
                    "round {}: {} -> {j} one-way",
                    decision.round,
                    sender.node
                );
            }
            let row = rows
                .iter()
                .find(|r| r.round == decision.round && r.node == sender.node)
                .expect("a row per node and round");
            let n = sender.receivers.len() as u32;
            assert_eq!(
                row.metrics.messages_sent, n,
                "round {} node {}",
                decision.round, sender.node
            );
            assert_eq!(
                row.metrics.messages_received, n,
                "round {} node {}",
                decision.round, sender.node
            );
            assert_eq!(row.metrics.peers_heard, n);
        }
    }
}

#[test]
fn a_pairing_is_a_matching_whose_partners_alone_get_messages_and_min_energy_power_spends_less() {
    let (mesh, none) = run("mesh", &[]);
    assert!(none.is_empty(), "no policy set, no policy.jsonl");

    let (paired, decisions) = run("pairs", &["channel.selection=\"pairs\""]);
    check_against_the_wire(&paired, &decisions);
    for decision in &decisions {
        // Six live nodes within 100 m: three pairs, everyone at full power.
        for sender in &decision.senders {
            assert_eq!(
                sender.receivers.len(),
                1,
                "round {}: {:?}",
                decision.round,
                decision.senders
            );
            assert_eq!(sender.power_dbm, [20.0]);
        }
    }
    assert!(
        decisions.windows(2).any(|w| w[0].senders != w[1].senders),
        "the pairs follow the fading"
    );

    let (saving, controlled) = run(
        "pairs-min-energy",
        &["channel.selection=\"pairs\"", "channel.power_control={min_energy={}}"],
    );
    check_against_the_wire(&saving, &controlled);
    for (full, lowered) in decisions.iter().zip(&controlled) {
        for (a, b) in full.senders.iter().zip(&lowered.senders) {
            assert_eq!(a.receivers, b.receivers, "power control does not change who is paired");
            assert!(
                b.power_dbm.iter().all(|&p| (-40.0..=20.0).contains(&p)),
                "{:?}",
                b.power_dbm
            );
        }
    }
    assert!(
        controlled
            .iter()
            .flat_map(|d| &d.senders)
            .any(|s| s.power_dbm[0] < 20.0)
    );
    // The same messages on the same links, at the energy-optimal power: less energy at
    // both ends.
    let (mesh_j, paired_j, saving_j) = (radio_energy(&mesh), radio_energy(&paired), radio_energy(&saving));
    assert!(paired_j < mesh_j / 3.0, "pairs {paired_j} J, full mesh {mesh_j} J");
    assert!(saving_j < paired_j, "min-energy {saving_j} J, full power {paired_j} J");
    for (a, b) in paired.iter().zip(&saving) {
        assert_eq!(
            (a.node, a.round, a.metrics.messages_received),
            (b.node, b.round, b.metrics.messages_received)
        );
    }
}

#[test]
fn strongest_k_keeps_at_least_k_symmetric_partners_each() {
    let (rows, decisions) = run("strongest", &["channel.selection={strongest={k=2}}"]);
    check_against_the_wire(&rows, &decisions);
    for decision in &decisions {
        for sender in &decision.senders {
            assert!((2..NODES as usize).contains(&sender.receivers.len()), "{:?}", sender);
        }
    }
    // Fewer than a full mesh's five each, on average.
    let mean = decisions
        .iter()
        .flat_map(|d| &d.senders)
        .map(|s| s.receivers.len())
        .sum::<usize>() as f64
        / (ROUNDS * NODES) as f64;
    assert!(mean < 4.0, "mean {mean} receivers");
}

#[test]
fn a_shared_band_in_shortest_first_order_lasts_the_air_times_its_plan_says() {
    let (rows, decisions) = run(
        "shared",
        &[
            // Within 30 m no link is in outage: every turn carries all five messages.
            "channel.area_m=30",
            "channel.access=\"shared\"",
            "channel.band_order=\"shortest_first\"",
            "channel.power_control={target_snr={target_snr_db=15}}",
        ],
    );
    check_against_the_wire(&rows, &decisions);
    for decision in &decisions {
        let mut turns: Vec<(u32, [f64; 2])> = decision
            .senders
            .iter()
            .map(|s| (s.node, s.turn_s.expect("a turn on the shared band")))
            .collect();
        turns.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]));
        let mut clock = 0.0;
        for (node, [start_s, airtime_s]) in &turns {
            assert_eq!(*start_s, clock, "round {}: turns follow each other", decision.round);
            clock += airtime_s;
            // The turn is the air time the node's own radio spent.
            let row = rows
                .iter()
                .find(|r| r.round == decision.round && r.node == *node)
                .unwrap();
            assert!(
                (row.metrics.airtime_s - airtime_s).abs() <= 1e-12 * airtime_s,
                "round {} node {node}: plan {airtime_s} s, spent {} s",
                decision.round,
                row.metrics.airtime_s
            );
        }
        assert!(
            turns.windows(2).all(|w| w[0].1[1] <= w[1].1[1]),
            "shortest first: {turns:?}"
        );
    }
}

#[test]
fn bad_policies_are_refused_naming_the_field() {
    let dir = TempDir::new("radio-policy-refused");
    for (setting, field) in [
        ("channel.selection={strongest={k=0}}", "channel.selection.strongest.k"),
        ("channel.band_order=\"shortest_first\"", "channel.band_order"),
        (
            "channel.power_control={min_energy={min_power_dbm=30}}",
            "channel.power_control.min_power_dbm",
        ),
        (
            "channel.power_control={target_snr={target_snr_db=nan}}",
            "channel.power_control.target_snr.target_snr_db",
        ),
    ] {
        let output = launch(dir.path(), &radio(&[setting]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting} was accepted");
        assert!(stderr.contains(field), "{setting}: {stderr}");
    }
}

#[test]
fn compare_sweeps_policies_over_seeds_by_energy_to_target_and_resumes_what_finished() {
    let dir = TempDir::new("radio-policy-frontier");
    let compare = || {
        let mut command = std::process::Command::new(common::WDML);
        command.args(["compare", "--algorithms", "dml", "--seeds", "1,2"]);
        for o in radio(&[]) {
            command.arg("--set").arg(o);
        }
        command
            .args(["--set", "data.validation=300", "--sweep", "channel.selection=all,pairs"])
            .arg("--out")
            .arg(dir.path());
        command
    };
    let output = compare().output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sweep.json")).unwrap()).unwrap()
    };
    let first = read();
    assert_eq!(first["basis"], "validation");
    assert_eq!(first["seeds"], serde_json::json!([1, 2]));
    let points = first["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    let (mesh, pairs) = (&points[0], &points[1]);
    assert_eq!(pairs["setting"]["channel.selection"], "\"pairs\"");
    // The default target is the lowest best of any run: every run reached it.
    assert_eq!(
        (mesh["reached"].as_u64(), pairs["reached"].as_u64()),
        (Some(2), Some(2))
    );
    // Seed by seed: the ratio's mean is the mean of the two seeds' ratios, from the runs.
    let to_target = |setting: &str, seed: u64| -> f64 {
        let run = dir.path().join(format!("seed-{seed}/selection={setting}/dml"));
        let target = first["target"].as_f64().unwrap();
        let curve = wdml_coordinator::curve(&metrics(&run));
        let reached = curve
            .iter()
            .find(|p| p.mean_validation_accuracy.unwrap() >= target - 1e-9)
            .unwrap();
        reached.cumulative_energy_j
    };
    let ratio = (to_target("pairs", 1) / to_target("all", 1) + to_target("pairs", 2) / to_target("all", 2)) / 2.0;
    let shown = pairs["energy_to_target_ratio_vs_first"]["mean"].as_f64().unwrap();
    assert!((shown - ratio).abs() < 1e-12, "{shown} vs {ratio}");
    assert!(
        std::fs::read_to_string(dir.path().join("sweep.md"))
            .unwrap()
            .contains("energy to target vs first")
    );

    // Interrupted: one run lost. --resume keeps the three others and runs it again,
    // to the same figures (a seeded run is deterministic).
    std::fs::remove_dir_all(dir.path().join("seed-2/selection=pairs")).unwrap();
    let output = compare().arg("--resume").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("kept (finished under the same scenario)").count(),
        3,
        "{stderr}"
    );
    assert_eq!(read()["points"], first["points"]);
}

#[test]
fn a_selection_holds_over_the_air_and_for_moving_devices() {
    // Over the air each receiver's slot is shared by the neighbours the selection gave
    // it: every node hears, in one analog sum, exactly its chosen ones.
    let (rows, decisions) = run(
        "over-the-air",
        &[
            "channel.access=\"shared\"",
            "channel.mode=\"over_the_air\"",
            "exchange.encoding=\"f32\"",
            "channel.selection={strongest={k=2}}",
        ],
    );
    check_against_the_wire(&rows, &decisions);
    assert!(
        decisions
            .iter()
            .flat_map(|d| &d.senders)
            .all(|s| s.power_dbm.is_empty()),
        "over the air, channel inversion sets the powers"
    );
    // Walking devices: each round's pairing on the channel of that moment.
    let (rows, decisions) = run(
        "moving",
        &[
            "channel.mobility={random_waypoint={speed_min_mps=5,speed_max_mps=10}}",
            "channel.selection=\"pairs\"",
        ],
    );
    check_against_the_wire(&rows, &decisions);
    for decision in &decisions {
        assert!(decision.senders.iter().all(|s| s.receivers.len() <= 1));
    }
}

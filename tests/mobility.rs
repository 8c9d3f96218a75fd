//! Moving devices, for real: a node walks out of radio range and back, along a
//! measured trace; the coordinator hands out each round's neighbours from the positions
//! of that moment, and the node stops being heard while it is away.

mod common;

use common::{TempDir, launch, metrics, small};
use serde::Deserialize;

#[derive(Deserialize)]
struct Positions {
    round: u32,
    emulated_s: f64,
    positions: Vec<[f64; 2]>,
    neighbours: Vec<Vec<u32>>,
}

#[test]
fn a_node_that_walks_out_of_range_stops_being_a_neighbour_and_comes_back() {
    let out = TempDir::new("mobility");
    // Node 2 stands 20 m from node 0 until 3 s, walks 3 km away by 4 s, stays until 8 s
    // and is back by 9 s.
    let files = TempDir::new("mobility-trace");
    let trace = files.path().join("walk.csv");
    std::fs::write(
        &trace,
        "time_s,node,x_m,y_m\n0,2,20,0\n3,2,20,0\n4,2,3000,0\n8,2,3000,0\n9,2,20,0\n",
    )
    .unwrap();
    let mut overrides = small(3, 14);
    overrides.extend([
        "channel.preset=\"d2d-urban\"".to_string(),
        "channel.time_scale=0.0".into(),
        "channel.positions=[{x_m=0.0,y_m=0.0},{x_m=10.0,y_m=0.0},{x_m=20.0,y_m=0.0}]".into(),
        "channel.topology={radio_range={min_snr_db=10.0}}".into(),
        format!("channel.mobility={{trace={{file=\"{}\"}}}}", trace.display()),
        // About one emulated second of compute a round, so that time passes.
        "nodes.devices=[\"custom:0.3:1\"]".into(),
    ]);
    assert!(launch(out.path(), &overrides).status.success());

    let text = std::fs::read_to_string(out.path().join("positions.jsonl")).unwrap();
    let rounds: Vec<Positions> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=14).collect::<Vec<_>>()
    );
    let (mut away, mut near_before, mut near_after) = (0, 0, 0);
    for r in &rounds {
        let x = r.positions[2][0];
        if r.emulated_s <= 3.0 || r.emulated_s >= 9.0 {
            assert_eq!(x, 20.0, "round {} at {} s", r.round, r.emulated_s);
            assert!(r.neighbours[0].contains(&2), "round {}: {:?}", r.round, r.neighbours);
            if r.emulated_s <= 3.0 {
                near_before += 1
            } else {
                near_after += 1
            }
        } else if (4.0..=8.0).contains(&r.emulated_s) {
            assert_eq!(x, 3000.0);
            assert!(
                !r.neighbours[0].contains(&2) && r.neighbours[2].is_empty(),
                "{:?}",
                r.neighbours
            );
            away += 1;
        }
        // Nodes 0 and 1 do not move.
        assert_eq!((r.positions[0], r.positions[1]), ([0.0, 0.0], [10.0, 0.0]));
    }
    assert!(
        near_before > 0 && away > 0 && near_after > 0,
        "{near_before} {away} {near_after}"
    );

    // Node 0 hears node 2 exactly in the rounds the coordinator made them neighbours.
    let rows = metrics(out.path());
    for r in &rounds {
        let row = rows.iter().find(|m| m.round == r.round && m.node == 0).unwrap();
        let expected = r.neighbours[0].len() as u32;
        assert_eq!(
            row.metrics.peers_heard + row.metrics.messages_lost,
            expected,
            "round {}",
            r.round
        );
    }
}

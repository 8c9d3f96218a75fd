//! How the presets behave end to end, through the public API only: placement, topology and
//! a 2,560-byte message (64 public samples × 10 classes of f32 logits) per neighbour per
//! round, over many seeded runs. The runs are seeded, so the numbers are exact
//! replays; the bounds document what each preset is for.

use crate::{ChannelConfig, Link, Preset, Topology};

/// Per-message statistics of a preset over `runs` seeded runs of `nodes` devices.
struct Stats {
    messages: u64,
    lost: u64,
    outage: u64,
    mean_degree: f64,
}

fn simulate(config: &ChannelConfig, nodes: usize, runs: u64, rounds: u64) -> Stats {
    let resolved = config.resolve().unwrap();
    let mut stats = Stats {
        messages: 0,
        lost: 0,
        outage: 0,
        mean_degree: 0.0,
    };
    let mut degrees = 0;
    for run_seed in 0..runs {
        let channel = resolved.channel(run_seed, nodes).unwrap();
        let adjacency = resolved.topology.adjacency(&channel).unwrap();
        for (from, neighbours) in adjacency.iter().enumerate() {
            degrees += neighbours.len();
            for &to in neighbours {
                for round in 0..rounds {
                    let outcome = channel.unicast(Link::new(from, to), round, 0, 2560).unwrap().run();
                    stats.messages += 1;
                    stats.lost += u64::from(!outcome.delivered);
                    stats.outage += u64::from(outcome.outage);
                }
            }
        }
    }
    stats.mean_degree = degrees as f64 / (runs as usize * nodes) as f64;
    stats
}

fn loss_rate(stats: &Stats) -> f64 {
    stats.lost as f64 / stats.messages as f64
}

#[test]
fn wifi_in_a_room_is_clean() {
    let stats = simulate(&ChannelConfig::from_preset(Preset::Wifi), 8, 20, 20);
    assert_eq!(stats.lost, 0);
}

#[test]
fn d2d_urban_loses_a_message_only_rarely() {
    let stats = simulate(&ChannelConfig::from_preset(Preset::D2dUrban), 8, 20, 20);
    let rate = loss_rate(&stats);
    assert!(rate > 0.0 && rate < 0.05, "{rate}");
    assert_eq!(stats.mean_degree, 7.0);
}

#[test]
fn d2d_edge_loses_messages_regularly_but_not_mostly() {
    let stats = simulate(&ChannelConfig::from_preset(Preset::D2dEdge), 8, 20, 20);
    let rate = loss_rate(&stats);
    assert!((0.1..0.35).contains(&rate), "{rate}");
    // most losses are rounds in outage, the rest frames lost beyond the retry
    assert!(stats.outage > 0 && stats.outage < stats.lost);
    // the union of 3-nearest sets: at least 3 neighbours, fewer than everyone
    assert!(
        stats.mean_degree >= 3.0 && stats.mean_degree < 7.0,
        "{}",
        stats.mean_degree
    );
}

#[test]
fn d2d_edge_full_mesh_loses_more_than_its_nearest_neighbours() {
    let nearest = simulate(&ChannelConfig::from_preset(Preset::D2dEdge), 8, 20, 10);
    let full = ChannelConfig {
        topology: Some(Topology::FullMesh),
        ..ChannelConfig::from_preset(Preset::D2dEdge)
    };
    let everyone = simulate(&full, 8, 20, 10);
    assert!(loss_rate(&everyone) > loss_rate(&nearest));
}

#[test]
fn the_coordinator_and_a_node_compute_the_same_channel() {
    // Two independent resolutions of one scenario, as two processes would do.
    let text = "preset = \"d2d-urban\"\nmode = \"broadcast\"";
    let coordinator = toml::from_str::<ChannelConfig>(text).unwrap().resolve().unwrap();
    let node = toml::from_str::<ChannelConfig>(text).unwrap().resolve().unwrap();
    let (a, b) = (coordinator.channel(2024, 6).unwrap(), node.channel(2024, 6).unwrap());
    assert_eq!(a.positions(), b.positions());
    for round in [0, 1, 99] {
        // the node asks for its own links only, in its own order
        for to in (1..6).rev() {
            assert_eq!(
                a.link_state(Link::new(0, to), round).unwrap(),
                b.link_state(Link::new(0, to), round).unwrap()
            );
        }
        let sent_by_coordinator_view = a.broadcast(0, &[1, 2, 3, 4, 5], round, 0, 5000).unwrap().run();
        let sent_by_node_view = b.broadcast(0, &[1, 2, 3, 4, 5], round, 0, 5000).unwrap().run();
        assert_eq!(sent_by_coordinator_view, sent_by_node_view);
    }
}

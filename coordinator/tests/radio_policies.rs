//! Radio policies in the coordinator, in-process under paused time ([`harness`]): with
//! `channel.selection = "pairs"` on a ring every round's start gives each member at
//! most one neighbour, the same pairing `policy.jsonl` records and the channel
//! computes, and every absence (not only those near the receiver, as without a policy:
//! a node derives everyone's choice).

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Coordinator, honest_metrics};
use wdml_channel::{ChannelConfig, Preset, Selection, Topology};
use wdml_coordinator::{Decisions, POLICY_FILE};

#[tokio::test(start_paused = true)]
async fn a_pairing_gives_each_member_one_partner_and_every_absence() {
    let nodes = 6;
    let rounds = 3;
    let channel = ChannelConfig {
        selection: Selection::Pairs,
        topology: Some(Topology::Ring),
        time_scale: 0.0,
        ..ChannelConfig::from_preset(Preset::D2dUrban)
    }
    .resolve()
    .unwrap();
    let json = serde_json::to_string(&channel).unwrap();
    let mut coordinator = Coordinator::start("pairs", nodes, rounds, |c| {
        c.channel = channel.clone();
        c.settings.channel = json;
        c.neighbours = (0..nodes).map(|i| ring(i, nodes)).collect();
        // Four members are enough to start: the two that never join are absent.
        c.min_nodes = 4;
        c.min_participation = 0.0;
    })
    .await;
    let members = coordinator.members(4).await;
    // (member, round, neighbour count, absent) for every StartRound.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let plays: Vec<_> = members
        .into_iter()
        .map(|member| {
            let seen = seen.clone();
            tokio::spawn(member.play(move |m, start| {
                seen.lock()
                    .unwrap()
                    .push((m.id, start.round + 1, start.neighbour_count, start.absent.clone()));
                m.report_after(Duration::ZERO, start, honest_metrics(0.5));
            }))
        })
        .collect();
    let summary = coordinator.end().await.expect("the run ends");
    assert!(summary.finished, "{}", summary.reason);
    for play in plays {
        play.await.unwrap();
    }
    let decisions: Vec<Decisions> = std::fs::read_to_string(coordinator.run_dir.join(POLICY_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decisions.len(), rounds as usize);
    let live_channel = channel.channel(7, nodes as usize).unwrap();
    for decision in &decisions {
        // The live members only, each in at most one pair, and the pairing the channel
        // gives for the live ones.
        let senders: Vec<u32> = decision.senders.iter().map(|s| s.node).collect();
        assert_eq!(senders, [0, 1, 2, 3]);
        let live: Vec<Vec<usize>> = (0..nodes)
            .map(|i| match i < 4 {
                true => ring(i, nodes)
                    .into_iter()
                    .filter(|&j| j < 4)
                    .map(|j| j as usize)
                    .collect(),
                false => Vec::new(),
            })
            .collect();
        let expected = Selection::Pairs
            .round_neighbours(&live_channel, u64::from(decision.round - 1), &live)
            .unwrap();
        for s in &decision.senders {
            let want: Vec<u32> = expected[s.node as usize].iter().map(|&j| j as u32).collect();
            assert_eq!(s.receivers, want, "round {} node {}", decision.round, s.node);
            assert!(s.receivers.len() <= 1);
        }
        for (id, round, count, absent) in seen.lock().unwrap().iter().filter(|s| s.1 == decision.round) {
            let mine = &decision.senders.iter().find(|s| s.node == *id).unwrap().receivers;
            assert_eq!(*count as usize, mine.len(), "member {id} round {round}");
            // Node 1's ring neighbours are 0 and 2, theirs 5 and 3: 4 is near nobody it
            // hears, and is listed all the same.
            assert_eq!(absent, &[4, 5], "member {id} round {round}: every absence");
        }
    }
}

/// Node `i`'s neighbours on a ring of `n`, ascending.
fn ring(i: u32, n: u32) -> Vec<u32> {
    let mut both = vec![(i + 1) % n, (i + n - 1) % n];
    both.sort_unstable();
    both
}

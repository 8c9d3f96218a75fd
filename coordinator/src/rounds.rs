//! The round driver: wait for the members, then for each round send StartRound to
//! every live node, wait at the barrier for their Done reports (or the deadline),
//! and close the round into the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::timeout_at;
use tracing::{info, warn};
use wdml_proto::{
    CoordinatorEvent, Peer, RunComplete, RunEvent, RunFinished, StartRound, coordinator_event, run_event,
};

use wdml_channel::{derive_external_seed, purpose};

use crate::report::Summary;
use crate::service::{OpenRound, POLL, Shared, send_to};
use crate::{Error, Result};

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Every round closed.
    Finished,
    /// Stopped early (shutdown).
    Interrupted(String),
}

/// Runs every round. Errors end the run early (too few nodes, nobody left).
pub(crate) async fn drive(shared: Arc<Shared>) -> Result<Ending> {
    wait_for_members(&shared).await?;
    let settings = &shared.config.settings;
    let mut tokens = StdRng::seed_from_u64(derive_external_seed(settings.seed, &[purpose::ROUND_TOKENS]));
    for round in 0..settings.rounds {
        let token = tokens.random::<u64>() | 1;
        open_round(&shared, round, token)?;
        wait_at_barrier(&shared).await;
        close_round(&shared);
    }
    Ok(Ending::Finished)
}

/// Waits until every expected node has joined and opened its stream, or, after the
/// join timeout, at least the minimum.
async fn wait_for_members(shared: &Shared) -> Result<()> {
    let config = &shared.config;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.join_timeout;
    loop {
        let live = shared.state().members.live().count();
        if live >= config.settings.nodes as usize {
            info!(live, "all nodes joined");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            if live >= config.min_nodes as usize {
                warn!(
                    live,
                    expected = config.settings.nodes,
                    "join timeout: starting with the nodes present"
                );
                return Ok(());
            }
            return Err(Error::NotEnoughNodes {
                joined: live,
                min: config.min_nodes as usize,
                waited_s: started.elapsed().as_secs_f64(),
            });
        }
        let _ = timeout_at(deadline, shared.changed.notified()).await;
    }
}

/// Sends StartRound to every live member, each with its neighbours.
fn open_round(shared: &Shared, round: u32, token: u64) -> Result<()> {
    let settings = &shared.config.settings;
    let mut state = shared.state();
    state.round = round;
    let live: Vec<(u32, String, u64)> = state
        .members
        .live()
        .filter_map(|m| m.outbox.as_ref().map(|(c, _)| (m.id, m.advertise.clone(), *c)))
        .collect();
    if live.is_empty() {
        return Err(Error::NoLiveNodes { round });
    }
    let is_live = |j: &u32| live.iter().any(|(id, _, _)| id == j);
    // The radio neighbours that are live this round.
    let neighbours_of = |id: u32| -> Vec<u32> {
        shared.config.neighbours[id as usize]
            .iter()
            .copied()
            .filter(is_live)
            .collect()
    };
    let mut participants = Vec::new();
    for (id, _, connection) in &live {
        let neighbours = neighbours_of(*id)
            .into_iter()
            .map(|j| {
                let address = live
                    .iter()
                    .find(|(k, _, _)| *k == j)
                    .map(|(_, a, _)| a.clone())
                    .unwrap_or_default();
                Peer {
                    node_id: j,
                    address,
                    neighbours: neighbours_of(j),
                }
            })
            .collect();
        let start = StartRound {
            round,
            round_token: token,
            public_seed: derive_external_seed(settings.seed, &[purpose::PUBLIC_BATCH, u64::from(round)]),
            neighbours,
            exchange_timeout_ms: shared.config.exchange_timeout.as_millis() as u32,
        };
        let event = CoordinatorEvent {
            event: Some(coordinator_event::Event::StartRound(start)),
        };
        let member = state.members.get(*id).expect("listed as live");
        if send_to(member, event) {
            participants.push((*id, *connection));
        }
    }
    info!(round, participants = participants.len(), "round started");
    state.open = Some(OpenRound {
        round,
        token,
        started: Instant::now(),
        participants: participants.into_iter().collect(),
        reported: BTreeMap::new(),
    });
    Ok(())
}

/// Waits until every participant reported or is gone, or the round deadline.
async fn wait_at_barrier(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + shared.config.round_timeout;
    loop {
        let waiting = {
            let state = shared.state();
            let open = state.open.as_ref().expect("a round is open");
            open.participants
                .iter()
                .filter(|(id, connection)| {
                    // A participant that reconnected since the round started got no
                    // StartRound on its new stream: it will not report this round.
                    !open.reported.contains_key(id) && state.members.is_current(**id, **connection)
                })
                .count()
        };
        if waiting == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(waiting, "round deadline passed; closing the round without them");
            return;
        }
        // Also re-check now and then: a connection replaced without a wake-up.
        let _ = timeout_at(
            deadline.min(tokio::time::Instant::now() + POLL),
            shared.changed.notified(),
        )
        .await;
    }
}

/// Files the round's reports and tells the watchers.
fn close_round(shared: &Shared) {
    let mut state = shared.state();
    let open = state.open.take().expect("a round is open");
    let closed = Instant::now();
    let participants: Vec<u32> = open.participants.keys().copied().collect();
    let event = {
        let mut report = shared.report.lock().unwrap_or_else(|p| p.into_inner());
        report.close_round(&open, &participants, closed, &state.members)
    };
    drop(state);
    info!(
        round = open.round,
        reported = event.reported,
        missing = event.missing,
        mean_accuracy = format!("{:.4}", event.mean_accuracy),
        "round closed"
    );
    let _ = shared.watchers.send(RunEvent {
        event: Some(run_event::Event::RoundClosed(event)),
    });
}

/// Ends the run: tells every live node, writes the summary, tells the watchers, and
/// gives the nodes a moment to say goodbye before the server stops.
pub(crate) async fn finish(shared: &Shared, outcome: Result<Ending>) -> Result<Summary> {
    let (finished, reason) = match &outcome {
        Ok(Ending::Finished) => (true, "all rounds closed".to_string()),
        Ok(Ending::Interrupted(why)) => (false, why.clone()),
        Err(e) => (false, e.to_string()),
    };
    let summary = {
        let mut state = shared.state();
        state.finished = true;
        state.open = None;
        let rounds_closed = shared.report.lock().unwrap_or_else(|p| p.into_inner()).rounds_closed();
        let complete = RunComplete {
            rounds_closed,
            finished,
            reason: reason.clone(),
        };
        for member in state.members.live() {
            send_to(
                member,
                CoordinatorEvent {
                    event: Some(coordinator_event::Event::RunComplete(complete.clone())),
                },
            );
        }
        let report = shared.report.lock().unwrap_or_else(|p| p.into_inner());
        report.write_summary(&state.members, finished, &reason)
    };
    let run_dir = shared.config.run_dir.display().to_string();
    let _ = shared.watchers.send(RunEvent {
        event: Some(run_event::Event::RunFinished(RunFinished { run_dir, finished })),
    });
    // Nodes leave as soon as they read RunComplete; don't cut their streams first.
    let grace = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < grace && shared.state().members.live().next().is_some() {
        let _ = timeout_at(grace, shared.changed.notified()).await;
    }
    // Close what is still open, so the server's graceful shutdown has nothing to wait for.
    shared.state().members.close_all_streams();
    let summary = summary?;
    outcome.map(|_| summary)
}

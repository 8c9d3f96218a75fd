//! The round driver: wait for the members, then for each round send StartRound to
//! every live node, wait at the barrier for their Done reports (or the deadline),
//! and close the round into the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock throughout (the join wait, the barrier, the round's timings), so a
// test under `tokio::time::pause()` drives every deadline of a round.
use tokio::time::{Instant, timeout_at};
use tracing::{error, info, warn};
use wdml_proto::{
    CoordinatorEvent, Peer, RunComplete, RunEvent, RunFinished, StartRound, coordinator_event, run_event,
};
use wdml_transport::random_secret;

use wdml_channel::spectrum::{self, BandPlan, Sender};
use wdml_channel::{Access, Channel, Mode, derive_external_seed, purpose};
use wdml_proto::message;

use crate::barrier::{self, Decision, Reason};
use crate::barrier::{Moved, OpenRound};
use crate::members::Told;
use crate::report::Summary;
use crate::state::{POLL, Shared, State, send_to};
use crate::{Error, Result};

/// Closed rounds whose late reports are still recognised.
const RECENT_TOKENS: usize = wdml_proto::policy::MAX_STALENESS as usize + 1;

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Every round closed.
    Finished,
    /// Stopped early (shutdown).
    Interrupted(String),
}

/// Where the driver starts: round 0 of a new run, or the round after the last one a
/// restarted coordinator's journal records.
pub(crate) struct Start {
    pub first_round: u32,
    /// Nodes to wait for before the first round: all of them for a new run; every
    /// member it had for a resumed one.
    pub expected: usize,
    /// Start with fewer than `expected` once the join timeout has passed.
    pub minimum: usize,
}

/// Runs every round. Errors end the run early (too few nodes, nobody left, a journal
/// that cannot be written).
pub(crate) async fn drive(shared: Arc<Shared>, start: Start) -> Result<Ending> {
    // A run whose every round closed before a restart (its summary write failed, say)
    // has nothing left to run: it is written up now, with no node to wait for.
    if start.first_round >= shared.config.settings.rounds {
        info!("every round closed before this restart; writing the run up");
        return Ok(Ending::Finished);
    }
    wait_for_members(&shared, &start).await?;
    write_split(&shared);
    write_links(&shared);
    let mut round = start.first_round;
    while round < shared.config.settings.rounds {
        // Tokens only order and authenticate; they never shape results.
        let token = random_secret()?;
        open_round(&shared, round, token)?;
        match wait_at_barrier(&shared).await {
            Barrier::Closed { awaited } => {
                close_round(&shared, awaited)?;
                round += 1;
            }
            Barrier::Abandoned => {
                shared.state().open = None;
                warn!(
                    round = round + 1,
                    "every member left during the round; waiting for members to start it again"
                );
                let again = Start {
                    first_round: round,
                    expected: 1,
                    minimum: 1,
                };
                wait_for_members(&shared, &again).await?;
            }
        }
    }
    Ok(Ending::Finished)
}

/// Waits until every expected node has joined and opened its stream, or, after the
/// join timeout, at least the minimum; says so while it waits.
async fn wait_for_members(shared: &Shared, start: &Start) -> Result<()> {
    let config = &shared.config;
    let started = Instant::now();
    let deadline = Instant::now() + config.join_timeout;
    let mut said = None;
    loop {
        // Joined: accepted by Join; ready: its stream open too (what a round needs).
        let (joined, live) = {
            let state = shared.state();
            (state.members.all().count(), state.members.live().count())
        };
        if live >= start.expected {
            info!(live, "all nodes joined");
            return Ok(());
        }
        if said != Some((joined, live)) {
            info!(
                "waiting for nodes: {joined} of {} joined, {live} ready (stream open); waiting up to \
                 {:.0} s more (coordinator.join_timeout_ms), then starting with at least {} ready \
                 (coordinator.min_nodes)",
                start.expected,
                deadline.saturating_duration_since(Instant::now()).as_secs_f64(),
                start.minimum
            );
            said = Some((joined, live));
        }
        if Instant::now() >= deadline {
            if live >= start.minimum && live > 0 {
                warn!(
                    live,
                    expected = start.expected,
                    "join timeout: starting with the nodes present"
                );
                return Ok(());
            }
            return Err(Error::NotEnoughNodes {
                ready: live,
                joined: shared.state().members.all().count(),
                min: start.minimum,
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
    state.round = round + 1;
    // Live members by id: address and connection.
    let live: BTreeMap<u32, (String, u64)> = state
        .members
        .live()
        .filter_map(|m| m.outbox.as_ref().map(|(c, _)| (m.id, (m.advertise.clone(), *c))))
        .collect();
    let parameters: BTreeMap<u32, u64> = state.members.live().map(|m| (m.id, m.parameters)).collect();
    if live.is_empty() {
        return Err(Error::NoLiveNodes { round });
    }
    // Members nobody could connect to take part alone: absent for everyone else, and
    // every one of their neighbours absent for them.
    let unreachable: Vec<u32> = state.members.live().filter(|m| m.unreachable).map(|m| m.id).collect();
    let all_live = live;
    let mut live = all_live.clone();
    live.retain(|id, _| !unreachable.contains(id));
    let is_live = |j: &u32| live.contains_key(j);
    let emulated_start_s = state.emulated_s;
    // The channel of this moment, once, for whoever needs it: moving devices' topology
    // and the shared band's plan.
    let resolved = &shared.config.channel;
    let policies =
        !resolved.selection.is_all() || !resolved.radio.power_control.is_full() || !resolved.band_order.is_id();
    let needs_channel = !resolved.mobility.is_static() || resolved.access == Access::Shared || policies;
    let channel = match needs_channel {
        true => Some(
            resolved
                .channel_at(settings.seed, settings.nodes as usize, emulated_start_s)
                .map_err(channel_error)?,
        ),
        false => None,
    };
    let moved = neighbours_at(shared, channel.as_ref(), emulated_start_s)?;
    let radio_neighbours = moved.as_ref().map_or(&shared.config.neighbours, |m| &m.neighbours);
    // With a selection policy, the round's neighbours are its choice among the live
    // radio neighbours; every node computes the same from the channel and the absences.
    let selected = match (&channel, resolved.selection.is_all()) {
        (Some(channel), false) => Some(
            resolved
                .selection
                .choose(channel, u64::from(round), radio_neighbours, |j| is_live(&j))
                .map_err(channel_error)?,
        ),
        _ => None,
    };
    let radio_neighbours = selected.as_ref().unwrap_or(radio_neighbours);
    // The radio neighbours that are live this round.
    let neighbours_of =
        |id: u32| -> Vec<u32> { radio_neighbours[id as usize].iter().copied().filter(is_live).collect() };
    let band = match &channel {
        Some(channel) => band_plan(shared, channel, round, &parameters, &neighbours_of)?,
        None => BandPlan::default(),
    };
    let band_start = |id: u32| band.turn(id as usize).map_or(0.0, |t| t.start_s);
    let decisions = match (&channel, policies) {
        (Some(channel), true) => Some(decide(channel, resolved.mode, round, &live, &neighbours_of, &band)?),
        _ => None,
    };
    let absent: Vec<u32> = (0..settings.nodes).filter(|j| !is_live(j)).collect();
    let nobody = BTreeMap::new();
    let common = StartRound {
        round,
        round_token: token,
        public_seed: derive_external_seed(settings.seed, &[purpose::PUBLIC_BATCH, u64::from(round)]),
        // Validated to fit (Config::validate).
        exchange_timeout_ms: u32::try_from(shared.config.exchange_timeout.as_millis()).unwrap_or(u32::MAX),
        emulated_start_s,
        ..StartRound::default()
    };
    // Every StartRound built first, then all handed over at once: a node starts its
    // round (and takes a core on a shared machine) as soon as its own arrives, and
    // building the rest meanwhile stretched the gap between rounds (256 full-mesh nodes
    // on 2 cores: median gap 16 / 29 ms when built and sent one by one, 9 / 7.5 ms so).
    let starts: Vec<(u32, u64, CoordinatorEvent, Option<Told>)> = all_live
        .iter()
        .map(|(&id, &(_, connection))| {
            let told = state.members.get(id).map_or(&[][..], |m| m.told.as_slice());
            let (start, told) = match unreachable.contains(&id) {
                false => {
                    let (mut start, told) = start_for(id, &common, radio_neighbours, &live, told, &absent, &band_start);
                    if selected.is_some() {
                        // The node computes everyone's choice, so it needs every absence.
                        start.absent = absent.clone();
                    }
                    (start, told)
                }
                true => {
                    let everyone_else: Vec<u32> = (0..settings.nodes).filter(|&j| j != id).collect();
                    start_for(
                        id,
                        &common,
                        radio_neighbours,
                        &nobody,
                        told,
                        &everyone_else,
                        &band_start,
                    )
                }
            };
            let event = CoordinatorEvent {
                event: Some(coordinator_event::Event::StartRound(start)),
            };
            (id, connection, event, told)
        })
        .collect();
    let mut participants = Vec::with_capacity(starts.len());
    let mut neighbours = BTreeMap::new();
    for (id, connection, event, told) in starts {
        if let Some(coordinator_event::Event::StartRound(start)) = &event.event {
            neighbours.insert(id, start.neighbour_count);
        }
        let member = state.members.get_mut(id).expect("listed as live");
        if send_to(member, event) {
            // Given to its stream, which delivers in order or breaks (and a new stream
            // starts with nothing told).
            if let Some(told) = told {
                member.told = told;
            }
            participants.push((id, connection));
        }
    }
    // From the previous round's close to this one's last StartRound handed to its
    // stream: the coordinator's own time between rounds (the record's fsync included).
    let gap_ms = state.closing_began.take().map(|t| t.elapsed().as_secs_f64() * 1e3);
    info!(
        round = round + 1,
        participants = participants.len(),
        gap_ms,
        "round started"
    );
    state.open = Some(OpenRound {
        round,
        token,
        started: Instant::now(),
        participants: participants.into_iter().collect(),
        neighbours,
        reported: BTreeMap::new(),
        failed: Default::default(),
        moved,
        decisions,
    });
    Ok(())
}

/// Member `id`'s StartRound: the round's `common` fields, its band turn, the absences
/// among its radio neighbours and theirs, and an entry for each live radio neighbour
/// with something to tell: an address its stream was not `told` (the node keeps those
/// it was), or a band turn other than 0. The node derives the neighbours themselves
/// (radio neighbours minus the absent), so in a steady round the message carries no
/// list at all; its size follows its own neighbours only, never the run. Also returns
/// what its stream will have been told once this is sent, if that changed.
fn start_for(
    id: u32,
    common: &StartRound,
    radio_neighbours: &[Vec<u32>],
    live: &BTreeMap<u32, (String, u64)>,
    told: &[(u32, u64)],
    absent: &[u32],
    band_start: &dyn Fn(u32) -> f64,
) -> (StartRound, Option<Told>) {
    let mine = &radio_neighbours[id as usize];
    let current = || {
        mine.iter()
            .filter_map(|j| live.get_key_value(j))
            .map(|(&j, (address, connection))| (j, address, *connection))
    };
    // Both ascending by id: one walk through `told` finds what it already has.
    let mut earlier = told.iter().peekable();
    let mut changed = false;
    let (mut neighbours, mut count) = (Vec::new(), 0);
    for (j, address, connection) in current() {
        count += 1;
        while earlier.next_if(|(t, _)| *t < j).is_some() {
            changed = true;
        }
        let known = earlier.next_if(|&&told| told == (j, connection)).is_some();
        if !known {
            changed = true;
            // An address from an earlier connection of `j`: superseded.
            earlier.next_if(|(t, _)| *t == j);
        }
        let band_start_s = band_start(j);
        if !known || band_start_s != 0.0 {
            neighbours.push(Peer {
                node_id: j,
                address: if known { String::new() } else { address.clone() },
                band_start_s,
            });
        }
    }
    changed |= earlier.next().is_some();
    let near = |a: &&u32| {
        let hears = |list: &Vec<u32>| list.binary_search(a).is_ok();
        hears(mine) || current().any(|(j, ..)| hears(&radio_neighbours[j as usize]))
    };
    let absent = absent.iter().filter(near).copied().collect();
    let start = StartRound {
        neighbours,
        neighbour_count: count,
        band_start_s: band_start(id),
        absent,
        ..common.clone()
    };
    let told = changed.then(|| current().map(|(j, _, connection)| (j, connection)).collect());
    (start, told)
}

/// A channel model error here is a setting the start-up checks let through.
fn channel_error(e: wdml_channel::Error) -> Error {
    Error::Config {
        field: "channel".into(),
        reason: e.to_string(),
    }
}

/// On a shared band (`channel.access = "shared"`), the round's turns: every live
/// member that sends takes its turn in id order (`wdml_channel::spectrum`), each for
/// the air time its message to its live neighbours takes on the channel of this
/// moment; over the air, every live member's receive slot in id order; an empty plan
/// on dedicated bands.
fn band_plan(
    shared: &Shared,
    channel: &Channel,
    round: u32,
    parameters: &BTreeMap<u32, u64>,
    neighbours_of: &dyn Fn(u32) -> Vec<u32>,
) -> Result<BandPlan> {
    let (settings, resolved) = (&shared.config.settings, &shared.config.channel);
    if resolved.access != Access::Shared {
        return Ok(BandPlan::default());
    }
    if resolved.mode == Mode::OverTheAir {
        // One slot per receiver, in which its neighbours transmit their soft predictions
        // at once: one analog value per public image and class.
        let values = u64::from(settings.public_batch) * u64::from(settings.classes());
        let receivers: Vec<(usize, Vec<usize>)> = parameters
            .keys()
            .map(|&id| (id as usize, neighbours_of(id).into_iter().map(|j| j as usize).collect()))
            .collect();
        return spectrum::over_the_air(channel, u64::from(round), &receivers, values, resolved.air_min_snr_db)
            .map_err(channel_error);
    }
    let senders: Vec<Sender> = parameters
        .iter()
        .filter_map(|(&id, &parameters)| {
            let shape = message::shape(
                settings.algorithm(),
                settings.public_batch,
                settings.encoding(),
                settings.top_k,
                settings.classes(),
                parameters,
            )?;
            Some(Sender {
                node: id as usize,
                receivers: neighbours_of(id).into_iter().map(|j| j as usize).collect(),
                bytes: shape.bytes(),
            })
        })
        .collect();
    spectrum::tdma(
        channel,
        resolved.mode,
        resolved.band_order,
        u64::from(round),
        spectrum::ROUND_MESSAGE,
        &senders,
    )
    .map_err(channel_error)
}

/// The round's radio decisions for `policy.jsonl`: each live sender's receivers, powers
/// and band turn, from the same pure functions the nodes evaluate.
fn decide(
    channel: &Channel,
    mode: Mode,
    round: u32,
    live: &BTreeMap<u32, (String, u64)>,
    neighbours_of: &dyn Fn(u32) -> Vec<u32>,
    band: &BandPlan,
) -> Result<crate::report::Decisions> {
    let senders = live
        .keys()
        .map(|&node| {
            let receivers = neighbours_of(node);
            let targets: Vec<usize> = receivers.iter().map(|&j| j as usize).collect();
            let power_dbm = match mode {
                // Channel inversion sets each analog sender's power per slot.
                Mode::OverTheAir => Vec::new(),
                _ => channel
                    .sending_powers_dbm(mode, node as usize, &targets, u64::from(round))
                    .map_err(channel_error)?,
            };
            Ok(crate::report::SenderDecision {
                node,
                receivers,
                power_dbm,
                turn_s: band.turn(node as usize).map(|t| [t.start_s, t.airtime_s]),
            })
        })
        .collect::<Result<_>>()?;
    Ok(crate::report::Decisions {
        round: round + 1,
        senders,
    })
}

/// With moving devices (`channel.mobility`), each node's radio neighbours at emulated
/// time `t`, from the topology on the channel of that moment (and the positions go on
/// record when the round closes); `None` when the devices do not move (the configured
/// neighbours hold).
fn neighbours_at(shared: &Shared, channel: Option<&Channel>, t: f64) -> Result<Option<Moved>> {
    let resolved = &shared.config.channel;
    let Some(channel) = channel.filter(|_| !resolved.mobility.is_static()) else {
        return Ok(None);
    };
    let neighbours: Vec<Vec<u32>> = resolved
        .topology
        .adjacency(channel)
        .map_err(channel_error)?
        .into_iter()
        .map(|n| n.into_iter().map(|j| j as u32).collect())
        .collect();
    Ok(Some(Moved {
        emulated_s: t,
        positions: channel.positions().to_vec(),
        neighbours,
    }))
}

/// Waits until the round policy closes the round ([`barrier::decide`]): every awaited
/// participant reported or is gone (`sync`), enough of them plus the grace (`quorum`),
/// or the deadline (`deadline`); never past the round timeout.
async fn wait_at_barrier(shared: &Shared) -> Barrier {
    let rules = barrier::Rules::of(&shared.config).expect("validated at the start");
    let mut said = None;
    loop {
        let now = Instant::now();
        // One look at the state for the whole view: a member leaving between two looks
        // made a round everyone left look closed with no report (CI saw it: a stopped
        // run then resumed past a round it never had).
        let (decision, reported) = {
            let state = shared.state();
            let view = state.open.as_ref().expect("a round is open").view(&state.members);
            let reported = view.seats.iter().filter(|s| s.reported_at.is_some()).count();
            (barrier::decide(&rules, &view, now), reported)
        };
        match decision {
            Decision::Abandoned => return Barrier::Abandoned,
            Decision::Close { reason, awaited } => {
                let waiting = awaited.saturating_sub(reported);
                match reason {
                    Reason::AllReported => {}
                    Reason::Timeout => warn!(waiting, "round deadline passed; closing the round without them"),
                    _ => {
                        info!(waiting, policy = %shared.config.settings.round_policy(), "closing the round without them; they go on with the next")
                    }
                }
                return Barrier::Closed { awaited };
            }
            Decision::Wait { until, reason } => {
                if said != Some(until) {
                    said = Some(until);
                    let at_ms = until
                        .saturating_duration_since(shared.state().open.as_ref().map_or(now, |o| o.started))
                        .as_millis();
                    match reason {
                        Reason::Quorum => info!(
                            reported,
                            "quorum reached; closing {at_ms} ms into the round (the grace period)"
                        ),
                        Reason::Patience => info!(
                            reported,
                            "only members that missed their last report are left; waiting for them until {at_ms} ms into the round"
                        ),
                        _ => {}
                    }
                }
                // Also re-check now and then: a connection replaced without a wake-up.
                let _ = timeout_at(until.min(now + POLL), shared.changed.notified()).await;
            }
        }
    }
}

/// How waiting at the barrier ended.
enum Barrier {
    /// The policy closed the round; `awaited` nodes were expected to report.
    Closed { awaited: usize },
    /// Every participant left without reporting, and nobody is live.
    Abandoned,
}

/// Files the round's reports and tells the watchers.
fn close_round(shared: &Shared, awaited: usize) -> Result<()> {
    let mut state = shared.state();
    let open = state.open.take().expect("a round is open");
    let closed = Instant::now();
    state.closing_began = Some(closed);
    let participants: Vec<u32> = open.participants.keys().copied().collect();
    let finished: Vec<f64> = open.reported.values().map(|(m, _)| m.emulated_round_s).collect();
    let emulated_s = shared
        .config
        .closing()
        .expect("validated at the start")
        .emulated_span(&finished, awaited);
    // Remembered for late reports, as long as a message may be stale, and then some.
    state.emulated_s += emulated_s;
    state.recent_tokens.insert(open.round, open.token);
    while state.recent_tokens.len() > RECENT_TOKENS {
        state.recent_tokens.pop_first();
    }
    let event = shared
        .report()
        .close_round(&open, &participants, closed, &state.members, emulated_s)?;
    if let Some(moved) = &open.moved {
        // After the journal: a crash may lose this line, never repeat it.
        shared
            .report()
            .file_positions(open.round + 1, moved.emulated_s, &moved.positions, &moved.neighbours)?;
    }
    if let Some(decisions) = &open.decisions {
        shared.report().file_decisions(decisions)?;
    }
    let reported: Vec<u32> = open.reported.keys().copied().collect();
    state.members.count_reports(&participants, &reported, open.round + 1);
    shared.commit(&mut state);
    drop(state);
    info!(
        round = event.round,
        reported = event.reported,
        missing = event.missing,
        mean_accuracy = format!("{:.4}", event.mean_accuracy),
        // The first part of the next gap: filing the round (the journal's fsync).
        filed_ms = closed.elapsed().as_secs_f64() * 1e3,
        "round closed"
    );
    let _ = shared.watchers.send(RunEvent {
        event: Some(run_event::Event::RoundClosed(event)),
    });
    Ok(())
}

/// Records the realised split (the nodes' shards) in the run directory.
/// `links.json`: the topology's links where the devices were placed, with their SNR,
/// and `channel.json`, what recomputes any round's (only on an emulated radio: an
/// unshaped one has no SNR to tell).
fn write_links(shared: &Shared) {
    let (settings, resolved) = (&shared.config.settings, &shared.config.channel);
    if resolved.shaping != wdml_channel::Shaping::Emulate {
        return;
    }
    let written = resolved
        .channel(settings.seed, settings.nodes as usize)
        .map_err(channel_error)
        .and_then(|channel| shared.report().write_links(&channel, &shared.config.neighbours));
    if let Err(e) = written {
        warn!("no links.json: {e}");
    }
    let record = crate::report::ChannelRecord {
        seed: settings.seed,
        nodes: settings.nodes,
        channel: resolved.clone(),
    };
    if let Err(e) = shared.report().write_channel(&record) {
        warn!("no {}: {e}", crate::report::CHANNEL_FILE);
    }
}

fn write_split(shared: &Shared) {
    let state = shared.state();
    write_split_locked(shared, &state);
}

fn write_split_locked(shared: &Shared, state: &State) {
    if let Err(e) = shared.report().write_split(
        &state.members,
        &shared.config.settings.partition,
        shared.config.public_overlap.as_ref(),
    ) {
        warn!("no split.json: {e}");
    }
}

/// Ends the run: tells every live node, writes the summary, tells the watchers, and
/// gives the nodes a moment to say goodbye before the server stops.
pub(crate) async fn finish(shared: &Shared, outcome: Result<Ending>) -> Result<Summary> {
    let all_failed = shared.report().every_round_failed();
    let every_round_failed = "every round failed: no node reported any round (see the nodes' logs)";
    // A run is finished when its rounds closed with someone still in it: rounds that
    // closed on their deadlines after every node died learned nothing.
    let anyone_left = {
        let state = shared.state();
        let report = shared.report();
        // Someone still in it, or (a coordinator restarted after the last round, which
        // no node is connected to) someone who reported that last round.
        report.last_round_heard_from_anyone()
            || state.members.all().any(|m| {
                matches!(
                    m.presence,
                    crate::members::Presence::Live | crate::members::Presence::Joined
                ) && report.reported_any(m.id)
            })
    };
    // Every round must have heard from enough of the run's nodes to call it theirs.
    let nodes = shared.config.settings.nodes as usize;
    let needed = (shared.config.min_participation * nodes as f64).ceil() as usize;
    let thin = shared.report().thinnest_round().filter(|&(_, heard)| heard < needed);
    let (finished, reason) = match &outcome {
        // Whatever ended the run then (nobody left, say), this is its story.
        Ok(Ending::Finished) | Err(_) if all_failed => (false, every_round_failed.to_string()),
        Ok(Ending::Finished) if thin.is_some() => {
            let (round, heard) = thin.unwrap_or_default();
            (
                false,
                format!(
                    "all rounds closed, but round {round} heard from only {heard} of {nodes} nodes \
                     (coordinator.min_participation = {} needs {needed}); the membership events say why the rest did not",
                    shared.config.min_participation
                ),
            )
        }
        Ok(Ending::Finished) if !anyone_left => (
            false,
            "all rounds closed, but no node took part to the end (every one gone, left or silent)".to_string(),
        ),
        Ok(Ending::Finished) => (true, "all rounds closed".to_string()),
        Ok(Ending::Interrupted(why)) => (false, why.clone()),
        Err(e) => (false, e.to_string()),
    };
    if let Err(e) = &outcome {
        error!("the run ends early: {e}");
    }
    let summary = {
        let mut state = shared.state();
        state.finished = true;
        state.open = None;
        let rounds_closed = shared.report().rounds_closed();
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
        write_split_locked(shared, &state);
        shared.report().write_summary(&state.members, finished, &reason)
    };
    let run_dir = shared.config.run_dir.display().to_string();
    let _ = shared.watchers.send(RunEvent {
        event: Some(run_event::Event::RunFinished(RunFinished { run_dir, finished })),
    });
    // Nodes leave as soon as they read RunComplete; don't cut their streams first.
    let grace = Instant::now() + Duration::from_secs(3);
    while Instant::now() < grace && shared.state().members.live().next().is_some() {
        let _ = timeout_at(grace, shared.changed.notified()).await;
    }
    // Close what is still open, so the server's graceful shutdown has nothing to wait for.
    shared.state().members.close_all_streams();
    let summary = summary?;
    outcome.map(|_| summary)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use wdml_channel::{Channel, Position, RadioParams, Topology};

    use super::*;

    fn adjacency(topology: Topology, nodes: usize) -> Vec<Vec<u32>> {
        // Seeded scattered points, 1 km square.
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (state >> 11) as f64 / (1u64 << 53) as f64 * 1000.0
        };
        let positions = (0..nodes).map(|_| Position::new(next(), next())).collect();
        let channel = Channel::new(1, RadioParams::default(), positions).unwrap();
        let lists = topology.adjacency(&channel).unwrap();
        lists
            .into_iter()
            .map(|n| n.into_iter().map(|j| j as u32).collect())
            .collect()
    }

    /// Every node live at an address as long as a real one (`node-0042.wdml:7001`).
    fn all_live(nodes: usize) -> BTreeMap<u32, (String, u64)> {
        (0..nodes as u32)
            .map(|id| (id, (format!("node-{id:04}.wdml:7001"), 1)))
            .collect()
    }

    fn common() -> StartRound {
        StartRound {
            round: 1_000,
            round_token: u64::MAX,
            public_seed: u64::MAX,
            exchange_timeout_ms: 600_000,
            emulated_start_s: 12.5,
            ..StartRound::default()
        }
    }

    /// A round's start carries its receiver's neighbours and nothing that grows with
    /// the run: the first one at most a fixed part and one bounded entry per neighbour
    /// (its address), from 8 to 1,024 nodes, full mesh included (each neighbour's own
    /// list made it N² before); a later one on the same stream only the fixed part.
    #[test]
    fn a_round_start_grows_with_the_receivers_neighbours_only() {
        // Fields of `common` and framing, and per neighbour: its entry's framing, id,
        // the address and a band turn.
        let fixed = common().encoded_len() + 16;
        let per_neighbour = 2 + 4 + 2 + "node-0000.wdml:7001".len() + 9;
        let runs = [
            (Topology::FullMesh, 8),
            (Topology::FullMesh, 64),
            (Topology::FullMesh, 256),
            (Topology::KNearest { k: 3 }, 16),
            (Topology::KNearest { k: 3 }, 1_024),
            (Topology::Ring, 1_024),
        ];
        for (topology, nodes) in runs {
            let radio = adjacency(topology, nodes);
            let live = all_live(nodes);
            for id in 0..nodes as u32 {
                let (first, told) = start_for(id, &common(), &radio, &live, &[], &[], &|_| 1.5);
                let degree = radio[id as usize].len();
                assert_eq!(first.neighbours.len(), degree);
                assert!(
                    first.encoded_len() <= fixed + degree * per_neighbour,
                    "{topology:?} of {nodes}: node {id} with {degree} neighbours gets {} bytes",
                    first.encoded_len()
                );
                let told = told.expect("a new stream is told every address");
                assert_eq!(told.len(), degree);
                let (next, again) = start_for(id, &common(), &radio, &live, &told, &[], &|_| 0.0);
                assert!(next.neighbours.is_empty() && again.is_none());
                assert!(next.encoded_len() <= fixed, "{topology:?} of {nodes}: node {id}");
            }
        }
        // The same neighbourhood, the same bytes, however many nodes the run has.
        let ring = |nodes: usize| {
            let (start, _) = start_for(
                5,
                &common(),
                &adjacency(Topology::Ring, nodes),
                &all_live(nodes),
                &[],
                &[],
                &|_| 0.0,
            );
            start.encoded_len()
        };
        assert_eq!(ring(8), ring(1_024));
    }

    /// An address goes again only where the stream was not given it: a neighbour that
    /// came back on a new connection (it may be elsewhere) or a new neighbour; a band
    /// turn other than 0 goes every round, without the address.
    #[test]
    fn a_round_start_repeats_only_what_its_stream_was_not_told() {
        let radio = adjacency(Topology::FullMesh, 6);
        let mut live = all_live(6);
        // Node 0 was told 2 and 4 (4 on an earlier connection), and of a node that is
        // no longer its neighbour; 1, 3 and 5 are new to it.
        live.insert(4, ("node-0004.elsewhere:7001".into(), 7));
        let told = [(2, 1), (4, 1), (9, 1)];
        let turn = |j: u32| if j == 3 { 0.25 } else { 0.0 };
        let (start, now) = start_for(0, &common(), &radio, &live, &told, &[], &turn);
        let entries: Vec<(u32, &str, f64)> = start
            .neighbours
            .iter()
            .map(|p| (p.node_id, p.address.as_str(), p.band_start_s))
            .collect();
        assert_eq!(
            entries,
            [
                (1, "node-0001.wdml:7001", 0.0),
                (3, "node-0003.wdml:7001", 0.25),
                (4, "node-0004.elsewhere:7001", 0.0),
                (5, "node-0005.wdml:7001", 0.0)
            ]
        );
        let now = now.expect("changed");
        assert_eq!(now, [(1, 1), (2, 1), (3, 1), (4, 7), (5, 1)]);
        // Told everything: only the band turn goes, without its address.
        let (start, again) = start_for(0, &common(), &radio, &live, &now, &[], &turn);
        assert_eq!(again, None);
        assert_eq!(start.neighbours.len(), 1);
        assert_eq!(
            (start.neighbours[0].node_id, start.neighbours[0].address.as_str()),
            (3, "")
        );
    }

    /// Only absences a node needs are listed: its radio neighbours' and theirs. On a
    /// ring of 8 without node 3, node 5 (neighbours 4 and 6, whose neighbours are 3,
    /// 5 and 7) is told; node 0 (neighbours 7 and 1, theirs 6, 0 and 2) is not; node 4
    /// loses its neighbour 3 and is told why.
    #[test]
    fn a_round_start_lists_only_the_absences_near_its_receiver() {
        let radio = adjacency(Topology::Ring, 8);
        let mut live = all_live(8);
        live.remove(&3);
        let start = |id| start_for(id, &common(), &radio, &live, &[], &[3], &|_| 0.0).0;
        assert_eq!(start(5).absent, [3]);
        assert!(start(0).absent.is_empty());
        let four = start(4);
        assert_eq!(four.absent, [3]);
        assert_eq!(four.neighbours.iter().map(|p| p.node_id).collect::<Vec<_>>(), [5]);
    }
}

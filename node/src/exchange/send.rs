//! The one path by which a round's message goes out and the neighbours' come in: encode,
//! cut into frames, schedule on the radio, stream to every destination paced by that
//! schedule while the mailbox collects, then count what happened. The node's round and
//! the bench both use it, so the exchange metrics are filled in one place.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;
use wdml_channel::Shaping;
use wdml_proto::{RoundMetrics, Undelivered};

use super::client;
use super::codec::{self, Envelope, MessageShape};
use super::mailbox::{Collected, Mailbox, Quorum};
use super::shaper::{AirReceiver, Shaper};
use crate::Result;

/// One round's outgoing message.
pub struct Outgoing<'a> {
    pub envelope: Envelope,
    pub values: &'a [f32],
    pub shape: MessageShape,
    /// Every neighbour, with its link (`None`: unreachable, its frames are counted as
    /// sent by the radio but reach no stream).
    pub destinations: Vec<(u32, Option<client::Link>)>,
    /// Send nothing at all (a silent adversary): no frames, no radio cost.
    pub withhold: bool,
    /// Emulated seconds from now until the first transmission may start (the node's
    /// turn on a shared band; 0 on dedicated bands).
    pub wait_s: f64,
    /// Over the air: each destination's slot, in the order of `destinations` (`None`:
    /// digital).
    pub air: Option<Vec<AirReceiver>>,
    /// Where to say at once that a neighbour could not be given the message (for the
    /// coordinator to tell it), if anywhere.
    pub undelivered: Option<mpsc::UnboundedSender<Undelivered>>,
}

/// Sends `outgoing` through `shaper`'s schedule while collecting the round's messages
/// from `mailbox` until each neighbour in `awaited` arrived or its deadline passed (or
/// `deadline`, or the `quorum` and its grace); fills the exchange and radio counters of
/// `metrics`.
pub async fn send_and_collect(
    shaper: &Shaper,
    mailbox: &Mailbox,
    outgoing: Outgoing<'_>,
    deadline: Instant,
    awaited: &BTreeMap<u32, Instant>,
    quorum: Option<Quorum>,
    metrics: &mut RoundMetrics,
) -> Result<Collected> {
    let Outgoing {
        envelope,
        values,
        shape,
        destinations,
        withhold,
        wait_s,
        air,
        undelivered,
    } = outgoing;
    let round = envelope.round;
    let encoded = codec::encode(values, shape);
    let frames = codec::frames(&envelope, &encoded, shaper.frame_bytes());
    let (schedule, destinations) = if withhold {
        (Default::default(), Vec::new())
    } else {
        let schedule = match &air {
            Some(slots) => shaper.schedule_over_the_air(slots, frames.len()),
            None => {
                let receivers: Vec<u32> = destinations.iter().map(|(id, _)| *id).collect();
                shaper.schedule(round, &receivers, encoded.bytes.len() as u64, frames.len(), wait_s)?
            }
        };
        (schedule, destinations)
    };
    let cost = schedule.cost;
    metrics.airtime_s = cost.airtime_s;
    metrics.tx_energy_j = cost.tx_energy_j;
    metrics.frames_lost = cost.frames_lost;
    metrics.retransmissions = cost.retransmissions;

    let sending = client::transmit(
        frames,
        schedule,
        destinations,
        shaper.time_scale(),
        deadline,
        undelivered,
    );
    let (collected, sent) = tokio::join!(mailbox.collect(round, deadline, awaited, quorum), sending);
    for (outcome, result) in sent {
        metrics.frames_sent += outcome.frames;
        metrics.payload_bytes_sent += outcome.payload_bytes;
        metrics.wire_bytes_sent += outcome.wire_bytes;
        match result {
            Ok(()) if outcome.accepted => metrics.messages_sent += 1,
            Ok(()) => warn!(peer = outcome.to, "neighbour did not accept the message"),
            Err(status) if status.code() == tonic::Code::DataLoss => {}
            Err(status) => {
                warn!(peer = outcome.to, code = ?status.code(), "send failed: {}", status.message())
            }
        }
    }
    if shaper.shaping() == Shaping::Emulate {
        // Frames on the air: lost tries and retransmissions count, not just the
        // frames that reached a stream.
        metrics.frames_sent = cost.transmissions;
    }
    metrics.messages_received = collected.messages.len() as u32;
    metrics.peers_heard = collected.messages.len() as u32;
    metrics.messages_lost = collected.lost;
    metrics.payload_bytes_received = collected.messages.iter().map(|m| m.payload_bytes).sum();
    metrics.wire_bytes_received = collected.messages.iter().map(|m| m.wire_bytes).sum();
    Ok(collected)
}

//! Sending a message to a neighbour: one client stream of frames per message (fed at
//! the pace the shaper says), over a connection kept per neighbour address.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::debug;
use wdml_proto::transport::{Identity, Security};
use wdml_proto::{Frame, Undelivered, peer_exchange_client::PeerExchangeClient};

use super::shaper::Schedule;

/// What one send put on the wire and how it ended.
#[derive(Debug, Default)]
pub struct SendOutcome {
    pub to: u32,
    /// Frames the stream actually handed to the transport, and their bytes.
    pub frames: u32,
    pub payload_bytes: u64,
    pub wire_bytes: u64,
    /// The receiver accepted the whole message.
    pub accepted: bool,
}

/// Connections to the neighbours, reused across rounds.
pub struct PeerClients {
    security: Security,
    /// By neighbour and address: a neighbour back at a new address gets a new channel.
    channels: HashMap<(u32, String), Channel>,
    /// The round the connections were last used in.
    round: Option<u32>,
}

/// The largest frame this node will decode from a peer, headers included.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

impl PeerClients {
    pub fn new(security: Security) -> Self {
        PeerClients {
            security,
            channels: HashMap::new(),
            round: None,
        }
    }

    /// Starts `round` with these neighbours (id, address): keeps only their connections,
    /// and none if the node missed rounds.
    ///
    /// A neighbour that dropped out of the list (gone, left) may come back at a new IP
    /// behind the same name, and a node that missed rounds (cut off, its own address
    /// changed) may hold connections that lead nowhere. Kept, either hangs its sends to
    /// the deadline until the keepalives notice, up to 25 s: in CI's compose test a node
    /// back at a new address heard no one for five rounds. A new connection costs one
    /// handshake.
    pub fn begin_round<'a>(&mut self, round: u32, neighbours: impl IntoIterator<Item = (u32, &'a str)>) {
        if self.round.is_some_and(|last| last + 1 != round) {
            self.channels.clear();
        }
        self.round = Some(round);
        let live: std::collections::HashSet<(u32, &str)> = neighbours.into_iter().collect();
        self.channels
            .retain(|(id, address), _| live.contains(&(*id, address.as_str())));
    }

    /// A (lazily connected) channel to node `id` at `address`; over TLS the server
    /// must prove it is node `id`. A peer that vanished without closing (cut off, or
    /// back at a new address) is noticed within seconds by the keepalives.
    pub fn channel(&mut self, id: u32, address: &str) -> Result<Channel, Status> {
        let key = (id, address.to_string());
        if let Some(channel) = self.channels.get(&key) {
            return Ok(channel.clone());
        }
        let endpoint = self
            .security
            .endpoint(address, Identity::Node(id))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let channel = endpoint.connect_lazy();
        self.channels.insert(key, channel.clone());
        Ok(channel)
    }
}

/// Streams `frames` to one neighbour and waits for its receipt, until `deadline`.
/// Counts what was actually handed to the transport, so a send cut short is
/// accounted honestly.
pub async fn send(
    to: u32,
    channel: Channel,
    frames: impl tokio_stream::Stream<Item = Frame> + Send + 'static,
    deadline: tokio::time::Instant,
) -> (SendOutcome, Result<(), Status>) {
    let counted = Arc::new(Counters::default());
    let counter = counted.clone();
    let stream = frames.map(move |frame| {
        counter.frames.fetch_add(1, Ordering::Relaxed);
        counter.payload.fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        counter.wire.fetch_add(frame.encoded_len() as u64, Ordering::Relaxed);
        frame
    });
    let mut client = PeerExchangeClient::new(channel).max_decoding_message_size(MAX_FRAME_BYTES);
    let result = match tokio::time::timeout_at(deadline, client.send(stream)).await {
        Ok(result) => result.map(|receipt| receipt.into_inner().accepted),
        Err(_) => Err(Status::deadline_exceeded(
            "the exchange deadline passed before the receipt",
        )),
    };
    let outcome = SendOutcome {
        to,
        frames: counted.frames.load(Ordering::Relaxed) as u32,
        payload_bytes: counted.payload.load(Ordering::Relaxed),
        wire_bytes: counted.wire.load(Ordering::Relaxed),
        accepted: matches!(result, Ok(true)),
    };
    (outcome, result.map(|_| ()))
}

/// Streams `frames` to every destination at the pace `schedule` says: a frame is
/// written to a receiver's stream when the emulated radio has finished transmitting
/// it (schedule time × `time_scale` after the start); frames the radio lost are
/// never written. Returns each destination's outcome, in order; as soon as a
/// destination the radio reaches cannot be given the message (its connection failed
/// every try, or there is none), says so on `undelivered`, so that its node need not
/// wait for it until the deadline.
pub async fn transmit(
    frames: Vec<Frame>,
    schedule: Schedule,
    destinations: Vec<(u32, Option<Channel>)>,
    time_scale: f64,
    deadline: tokio::time::Instant,
    undelivered: Option<mpsc::UnboundedSender<Undelivered>>,
) -> Vec<(SendOutcome, Result<(), Status>)> {
    // Frames to deliver per receiver: its stream ends right after its last one, not
    // when the radio has served every neighbour (a receiver completes a message only
    // at its stream's end, so a paced broadcast to many neighbours held the first
    // ones' messages back until the last one's frames were on the air).
    let mut remaining = vec![0usize; destinations.len()];
    for delivery in &schedule.deliveries {
        remaining[delivery.receiver] += 1;
    }
    // One stream per destination, fed by one pacing loop (one radio).
    let mut outlets = Vec::with_capacity(destinations.len());
    let mut sends = Vec::with_capacity(destinations.len());
    let capacity = frames.len().max(1);
    for (receiver, (to, channel)) in destinations.into_iter().enumerate() {
        // A receiver the radio reaches with no frame at all (outage, or the first
        // frame given up) hears nothing: there is no stream to open.
        let heard = remaining[receiver] > 0;
        let (outlet, inlet) = mpsc::channel::<Frame>(capacity);
        outlets.push((heard && channel.is_some()).then_some(outlet));
        let nothing = SendOutcome {
            to,
            ..SendOutcome::default()
        };
        let undelivered = undelivered.clone().zip(frames.first()).map(|(tx, frame)| {
            let message = Undelivered {
                round: frame.round,
                round_token: frame.round_token,
                to,
            };
            (tx, message)
        });
        sends.push(tokio::spawn(async move {
            let (outcome, result) = match channel {
                _ if !heard => return (nothing, Err(Status::data_loss("no frame got through"))),
                Some(channel) => send_until(to, channel, inlet, capacity, deadline).await,
                None => (nothing, Err(Status::unavailable("unreachable"))),
            };
            if result.is_err()
                && let Some((tx, message)) = undelivered
            {
                let _ = tx.send(message);
            }
            (outcome, result)
        }));
    }
    let began = tokio::time::Instant::now();
    for delivery in schedule.deliveries {
        // A frame due after the deadline (or at an instant no clock can hold) would
        // arrive too late for the round: the radio has nothing more to deliver in time.
        let due = wdml_channel::wall_time(delivery.at_s, time_scale)
            .and_then(|after| began.checked_add(after))
            .filter(|due| *due <= deadline);
        let Some(due) = due else { break };
        // Only a frame due later waits: tokio's timer rounds a deadline up to its next
        // millisecond, so waiting for one already due cost every unpaced message 1 ms
        // of wall time and the CPU of a park and a wake-up (`wdml bench --only tls`).
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let Some(slot) = outlets.get_mut(delivery.receiver) else {
            continue;
        };
        if let Some(outlet) = slot.as_ref() {
            // A send that already failed has dropped its inlet: nothing to pace.
            let _ = outlet.send(frames[delivery.frame].clone()).await;
        }
        remaining[delivery.receiver] -= 1;
        if remaining[delivery.receiver] == 0 {
            *slot = None;
        }
    }
    drop(outlets);
    let mut outcomes = Vec::with_capacity(sends.len());
    for send in sends {
        outcomes.push(send.await.unwrap_or_else(|e| {
            (
                SendOutcome::default(),
                Err(Status::internal(format!("send task failed: {e}"))),
            )
        }));
    }
    outcomes
}

/// Tries a send that failed on its connection again after this pause, while the
/// deadline leaves time for it ...
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// ... at most this many times in all.
pub const MAX_TRIES: u32 = 3;

/// Failures another try may get past: the connection broke or never came up (on a
/// loaded machine, a handshake timed out; a stream was cut by the previous round's
/// deadline; HTTP/2 reset the connection, which tonic reports as `Internal` with an
/// "h2 protocol error"). Measured: 256 full-mesh nodes on two cores lost 25 messages
/// this way 15 s into round 2, and their 26 receivers waited for the 120 s deadline. A
/// refusal (a bad frame, another round, not a neighbour) would only be refused again.
fn worth_another_try(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

/// [`send`] of the frames `inlet` gives as the radio releases them, tried again
/// ([`worth_another_try`], [`RETRY_AFTER`], [`MAX_TRIES`]) until `deadline`: a new try
/// first replays every frame already released, then goes on with the inlet. The
/// outcome counts every try's frames (what went on the wire); a message an earlier
/// try delivered although its receipt was lost counts as accepted when the receiver
/// says it already has it.
async fn send_until(
    to: u32,
    channel: Channel,
    mut inlet: mpsc::Receiver<Frame>,
    capacity: usize,
    deadline: tokio::time::Instant,
) -> (SendOutcome, Result<(), Status>) {
    let mut released: Vec<Frame> = Vec::new();
    let mut inlet_open = true;
    let mut total = SendOutcome {
        to,
        ..SendOutcome::default()
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let (outlet, stream) = mpsc::channel::<Frame>(capacity);
        for frame in &released {
            // Room for every frame of the message: never full.
            let _ = outlet.try_send(frame.clone());
        }
        let mut outlet = inlet_open.then_some(outlet);
        let sending = send(to, channel.clone(), ReceiverStream::new(stream), deadline);
        tokio::pin!(sending);
        let (outcome, result) = loop {
            tokio::select! {
                done = &mut sending => break done,
                frame = inlet.recv(), if outlet.is_some() => match frame {
                    Some(frame) => {
                        released.push(frame.clone());
                        if let Some(outlet) = &outlet {
                            // A try that already failed dropped its stream; the frame
                            // is kept for the next.
                            let _ = outlet.send(frame).await;
                        }
                    }
                    None => {
                        inlet_open = false;
                        outlet = None;
                    }
                },
            }
        };
        total.frames += outcome.frames;
        total.payload_bytes += outcome.payload_bytes;
        total.wire_bytes += outcome.wire_bytes;
        total.accepted = outcome.accepted;
        match result {
            Err(status)
                if tries < MAX_TRIES
                    && worth_another_try(&status)
                    && tokio::time::Instant::now() + RETRY_AFTER < deadline =>
            {
                debug!(peer = to, tries, "send failed ({}); trying again", status.message());
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(status) if tries > 1 && status.code() == Code::AlreadyExists => {
                total.accepted = true;
                return (total, Ok(()));
            }
            result => return (total, result),
        }
    }
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    payload: AtomicU64,
    wire: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(peers: &PeerClients) -> Vec<u32> {
        let mut ids: Vec<u32> = peers.channels.keys().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn a_neighbour_that_drops_out_or_a_node_that_missed_rounds_connects_anew() {
        let mut peers = PeerClients::new(Security::Insecure);
        let both = [(1, "node-1:7001"), (2, "node-2:7001")];
        peers.begin_round(0, both);
        for (id, address) in both {
            peers.channel(id, address).unwrap();
        }
        peers.begin_round(1, both);
        assert_eq!(cached(&peers), [1, 2], "kept from round to round");
        peers.begin_round(2, [(1, "node-1:7001")]);
        assert_eq!(cached(&peers), [1], "node 2 gone: its connection dropped");
        peers.begin_round(3, [(1, "node-1:7001"), (2, "node-2:7001")]);
        assert_eq!(cached(&peers), [1], "node 2 back: connected anew when used");
        peers.channel(2, "node-2:7001").unwrap();
        peers.begin_round(7, both);
        assert!(
            cached(&peers).is_empty(),
            "this node missed rounds: every connection anew"
        );
    }
}

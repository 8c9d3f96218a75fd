//! Sending a message to a neighbour: one long-lived stream per neighbour, on a
//! connection kept per neighbour address, carrying one message after another (each fed
//! at the pace the shaper says) and bringing back a receipt for each.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tracing::debug;
use wdml_proto::{Frame, Receipt, Undelivered, peer_exchange_client::PeerExchangeClient};
use wdml_transport::{Identity, Security};

use super::service::IDLE_TIMEOUT;
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
    /// No connection to the receiver came up (refused, or not done within the connect
    /// timeout): the coordinator hears of it, and takes a receiver nobody reaches out of
    /// the exchange.
    pub unreachable: bool,
}

/// Links to the neighbours, reused across rounds.
pub struct PeerClients {
    security: Security,
    /// How long a link may take to come up (`RunSettings.connect_timeout_ms`).
    connect_timeout: Duration,
    /// By neighbour and address: a neighbour back at a new address gets a new link.
    links: HashMap<(u32, String), Link>,
    /// The round the links were last used in.
    round: Option<u32>,
}

/// The largest frame this node will decode from a peer, headers included.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

impl PeerClients {
    pub fn new(security: Security, connect_timeout: Duration) -> Self {
        PeerClients {
            security,
            connect_timeout,
            links: HashMap::new(),
            round: None,
        }
    }

    /// Starts `round` with these neighbours (id, address): keeps only their links, and
    /// none if the node missed rounds.
    ///
    /// A neighbour that dropped out of the list (gone, left) may come back at a new IP
    /// behind the same name, and a node that missed rounds (cut off, its own address
    /// changed) may hold connections that lead nowhere. Kept, either hangs its sends to
    /// the deadline until the keepalives notice, up to 25 s: in CI's compose test a node
    /// back at a new address heard no one for five rounds. A new connection costs one
    /// handshake.
    pub fn begin_round<'a>(&mut self, round: u32, neighbours: impl IntoIterator<Item = (u32, &'a str)>) {
        if self.round.is_some_and(|last| last + 1 != round) {
            self.links.clear();
        }
        self.round = Some(round);
        let live: std::collections::HashSet<(u32, &str)> = neighbours.into_iter().collect();
        self.links
            .retain(|(id, address), _| live.contains(&(*id, address.as_str())));
    }

    /// The link to node `id` at `address`, connected lazily; over TLS the server must
    /// prove it is node `id`. A peer that vanished without closing (cut off, or back at
    /// a new address) is noticed within seconds by the keepalives.
    pub fn link(&mut self, id: u32, address: &str) -> Result<Link, Status> {
        let key = (id, address.to_string());
        if let Some(link) = self.links.get(&key) {
            return Ok(link.clone());
        }
        let endpoint = self
            .security
            .endpoint_within(address, Identity::Node(id), self.connect_timeout)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let link = Link::within(endpoint.connect_lazy(), self.connect_timeout);
        self.links.insert(key, link.clone());
        Ok(link)
    }
}

/// A connection to one neighbour and the message stream open on it, if any. Clones
/// share both; one message at a time goes through it.
#[derive(Clone)]
pub struct Link(Arc<tokio::sync::Mutex<LinkState>>);

struct LinkState {
    channel: Channel,
    /// The channel's connect timeout: a try that waited this long for a connection
    /// would wait as long again, so it is not repeated.
    connect_timeout: Duration,
    open: Option<OpenStream>,
    /// Streams opened so far.
    opened: u32,
}

/// A `Stream` call in progress: where its frames go, where its receipts come from.
///
/// Reused only while idle, every message sent on it answered: a message cut short (by
/// the radio, the deadline or an error) closes it, so that no frame of an old message
/// ever goes out ahead of a new one.
struct OpenStream {
    frames: mpsc::UnboundedSender<Frame>,
    receipts: Streaming<Receipt>,
    /// What the transport has taken from `frames` so far.
    counted: Arc<Counters>,
    /// When the last receipt came.
    idle_since: Instant,
}

/// A stream quiet for longer than this is not reused: its receiver may be closing it
/// (after [`IDLE_TIMEOUT`]) just as the next message goes out.
const REUSE_WITHIN: Duration = Duration::from_secs(IDLE_TIMEOUT.as_secs() / 2);

impl Link {
    /// A link on `channel`, made with the transport's own connect timeout.
    pub fn new(channel: Channel) -> Self {
        Link::within(channel, wdml_transport::CONNECT_TIMEOUT)
    }

    /// A link on `channel`, whose endpoint was given `connect_timeout`.
    pub fn within(channel: Channel, connect_timeout: Duration) -> Self {
        Link(Arc::new(tokio::sync::Mutex::new(LinkState {
            channel,
            connect_timeout,
            open: None,
            opened: 0,
        })))
    }

    /// How many streams this link has opened: one for all its messages, plus one after
    /// each message that was cut short, refused or not answered, or a long quiet.
    pub async fn streams_opened(&self) -> u32 {
        self.0.lock().await.opened
    }
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
    destinations: Vec<(u32, Option<Link>)>,
    time_scale: f64,
    deadline: Instant,
    undelivered: Option<mpsc::UnboundedSender<Undelivered>>,
) -> Vec<(SendOutcome, Result<(), Status>)> {
    // Frames to deliver per receiver: its send ends right after its last one, not
    // when the radio has served every neighbour (a paced broadcast to many neighbours
    // held the first ones' messages back until the last one's frames were on the air).
    let mut remaining = vec![0usize; destinations.len()];
    for delivery in &schedule.deliveries {
        remaining[delivery.receiver] += 1;
    }
    // One send per destination, fed by one pacing loop (one radio).
    let mut outlets = Vec::with_capacity(destinations.len());
    let mut sends = Vec::with_capacity(destinations.len());
    let capacity = frames.len().max(1);
    for (receiver, (to, link)) in destinations.into_iter().enumerate() {
        // A receiver the radio reaches with no frame at all (outage, or the first
        // frame given up) hears nothing: there is nothing to send.
        let heard = remaining[receiver] > 0;
        let (outlet, inlet) = mpsc::channel::<Frame>(capacity);
        outlets.push((heard && link.is_some()).then_some(outlet));
        let nothing = SendOutcome {
            to,
            ..SendOutcome::default()
        };
        let undelivered = undelivered.clone().zip(frames.first()).map(|(tx, frame)| {
            let message = Undelivered {
                round: frame.round,
                round_token: frame.round_token,
                to,
                unreachable: false,
            };
            (tx, message)
        });
        sends.push(tokio::spawn(async move {
            let (outcome, result) = match link {
                _ if !heard => return (nothing, Err(Status::data_loss("no frame got through"))),
                Some(link) => send_until(to, link, inlet, deadline).await,
                None => (nothing, Err(Status::unavailable("unreachable"))),
            };
            if result.is_err()
                && let Some((tx, message)) = undelivered
            {
                let _ = tx.send(Undelivered {
                    unreachable: outcome.unreachable,
                    ..message
                });
            }
            (outcome, result)
        }));
    }
    let began = Instant::now();
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
        if due > Instant::now() {
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

/// Sends the frames `inlet` gives as the radio releases them on `link`, tried again
/// ([`worth_another_try`], [`RETRY_AFTER`], [`MAX_TRIES`] tries on a new stream) until
/// `deadline`: a new try opens a new stream and first replays every frame already
/// released, then goes on with the inlet. The outcome counts every try's frames (what
/// went on the wire); a message an earlier try delivered although its receipt was lost
/// counts as accepted when the receiver says it already has it.
async fn send_until(
    to: u32,
    link: Link,
    mut inlet: mpsc::Receiver<Frame>,
    deadline: Instant,
) -> (SendOutcome, Result<(), Status>) {
    let mut total = SendOutcome {
        to,
        ..SendOutcome::default()
    };
    // The previous round's send on this link has ended by its deadline; a lock held
    // longer is a bug, which the deadline still bounds.
    let Ok(mut link) = tokio::time::timeout_at(deadline, link.0.lock()).await else {
        return (
            total,
            Err(Status::deadline_exceeded("the link stayed busy until the deadline")),
        );
    };
    let mut message = Released {
        frames: Vec::new(),
        inlet_open: true,
    };
    // Tries on a new stream, and all tries.
    let (mut tries, mut attempts) = (0, 0);
    // Whether any try got a stream open (the connection came up).
    let mut connected = false;
    loop {
        let reused = link.reusable();
        attempts += 1;
        if !reused {
            tries += 1;
        }
        let began = Instant::now();
        let mut opened = reused;
        let result = link
            .attempt(&mut message, &mut inlet, &mut total, deadline, &mut opened)
            .await;
        connected |= opened;
        // A try that never got a stream and waited out the connect timeout (a tarpit:
        // TCP accepted, TLS never done; a black hole) would wait as long again: the
        // receiver is unreachable this round. One refused at once is tried again
        // below (a restarting neighbour), and is unreachable if no try connects.
        if result.is_err() && !opened && began.elapsed() >= link.connect_timeout {
            total.unreachable = true;
            return (total, result.map(|_| ()));
        }
        let result = result.inspect_err(|_| total.unreachable = !connected);
        match result {
            Ok(receipt) => {
                total.accepted = receipt.accepted;
                total.unreachable = false;
                return (total, Ok(()));
            }
            // A stream quiet since the last message may have died meanwhile (its
            // receiver restarted, the connection broke): the message goes again at
            // once, on a new stream. A failed stream is never reused, so this happens
            // at most once per message.
            Err(status) if reused && worth_another_try(&status) => {
                debug!(
                    peer = to,
                    "the open stream failed ({}); opening another",
                    status.message()
                );
            }
            Err(status)
                if tries < MAX_TRIES && worth_another_try(&status) && Instant::now() + RETRY_AFTER < deadline =>
            {
                debug!(peer = to, tries, "send failed ({}); trying again", status.message());
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(status) if attempts > 1 && status.code() == Code::AlreadyExists => {
                total.accepted = true;
                total.unreachable = false;
                return (total, Ok(()));
            }
            Err(status) => return (total, Err(status)),
        }
    }
}

/// The frames of one message the radio has released so far, and whether it may
/// release more.
struct Released {
    frames: Vec<Frame>,
    inlet_open: bool,
}

impl Released {
    /// All of the message's frames are out (the first says how many it has).
    fn complete(&self) -> bool {
        self.frames
            .first()
            .is_some_and(|f| f.count as usize == self.frames.len())
    }
}

impl LinkState {
    /// Whether the next try goes on the open stream; one quiet for longer than
    /// [`REUSE_WITHIN`] is closed instead.
    fn reusable(&mut self) -> bool {
        if self
            .open
            .as_ref()
            .is_some_and(|open| open.idle_since.elapsed() >= REUSE_WITHIN)
        {
            self.open = None;
        }
        self.open.is_some()
    }

    /// One try: the message on this link's open stream (or a new one, if there is
    /// none), replaying what was released and forwarding the rest, until its receipt, a
    /// refusal or `deadline`. Adds what the transport took to `total`; sets `opened` once
    /// a stream is open. Keeps the stream open only after a receipt.
    async fn attempt(
        &mut self,
        message: &mut Released,
        inlet: &mut mpsc::Receiver<Frame>,
        total: &mut SendOutcome,
        deadline: Instant,
        opened: &mut bool,
    ) -> Result<Receipt, Status> {
        let (outlet, counted, mut receipts, mut opening) = match self.open.take() {
            Some(open) => (open.frames, open.counted, Some(open.receipts), None),
            None => {
                let (outlet, stream) = mpsc::unbounded_channel::<Frame>();
                let counted = Arc::new(Counters::default());
                let counter = counted.clone();
                let stream = UnboundedReceiverStream::new(stream).map(move |frame| {
                    counter.frames.fetch_add(1, Ordering::Relaxed);
                    counter.payload.fetch_add(frame.data.len() as u64, Ordering::Relaxed);
                    counter.wire.fetch_add(frame.encoded_len() as u64, Ordering::Relaxed);
                    frame
                });
                let mut client =
                    PeerExchangeClient::new(self.channel.clone()).max_decoding_message_size(MAX_FRAME_BYTES);
                let call = async move { client.stream(stream).await.map(tonic::Response::into_inner) };
                self.opened += 1;
                (outlet, counted, None, Some(Box::pin(call)))
            }
        };
        let before = counted.snapshot();
        let mut outlet = Some(outlet);
        let result = async {
            for frame in &message.frames {
                // Unbounded: never full. Closed only when the call is over, which
                // `receipts` or `opening` then says.
                let _ = outlet.as_ref().map(|o| o.send(frame.clone()));
            }
            loop {
                // A message cut short (the radio gave up on a frame, or the deadline came
                // before it was out): ending the stream tells the receiver it is lost.
                if !message.inlet_open && !message.complete() {
                    if message.frames.is_empty() {
                        return Err(Status::data_loss("no frame got through"));
                    }
                    outlet = None;
                }
                tokio::select! {
                    frame = inlet.recv(), if message.inlet_open => match frame {
                        Some(frame) => {
                            if let Some(outlet) = &outlet {
                                let _ = outlet.send(frame.clone());
                            }
                            message.frames.push(frame);
                        }
                        None => message.inlet_open = false,
                    },
                    call = async { opening.as_mut().expect("polled only while opening").await }, if opening.is_some() => {
                        opening = None;
                        receipts = Some(call?);
                        *opened = true;
                    }
                    receipt = async { receipts.as_mut().expect("polled only once open").message().await }, if receipts.is_some() => {
                        return match receipt? {
                            Some(receipt) if message.complete() && Some(receipt.round) == message.frames.first().map(|f| f.round) => Ok(receipt),
                            Some(receipt) => Err(Status::internal(format!(
                                "a receipt for round {} before this message was out", receipt.round
                            ))),
                            None if outlet.is_none() => Err(Status::data_loss("the message was cut short")),
                            None => Err(Status::unavailable("the neighbour closed the stream before its receipt")),
                        };
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(Status::deadline_exceeded("the exchange deadline passed before the receipt"));
                    }
                }
            }
        }
        .await;
        let sent = counted.snapshot();
        total.frames += (sent.0 - before.0) as u32;
        total.payload_bytes += sent.1 - before.1;
        total.wire_bytes += sent.2 - before.2;
        match (result, outlet, receipts) {
            (Ok(receipt), Some(frames), Some(receipts)) => {
                self.open = Some(OpenStream {
                    frames,
                    receipts,
                    counted,
                    idle_since: Instant::now(),
                });
                Ok(receipt)
            }
            (Ok(_), ..) => Err(Status::internal("a receipt for a message that was cut short")),
            (Err(status), ..) => Err(status),
        }
    }
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    payload: AtomicU64,
    wire: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.payload.load(Ordering::Relaxed),
            self.wire.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(peers: &PeerClients) -> Vec<u32> {
        let mut ids: Vec<u32> = peers.links.keys().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn a_neighbour_that_drops_out_or_a_node_that_missed_rounds_connects_anew() {
        let mut peers = PeerClients::new(Security::Insecure, Duration::from_secs(2));
        let both = [(1, "node-1:7001"), (2, "node-2:7001")];
        peers.begin_round(0, both);
        for (id, address) in both {
            peers.link(id, address).unwrap();
        }
        peers.begin_round(1, both);
        assert_eq!(cached(&peers), [1, 2], "kept from round to round");
        peers.begin_round(2, [(1, "node-1:7001")]);
        assert_eq!(cached(&peers), [1], "node 2 gone: its connection dropped");
        peers.begin_round(3, [(1, "node-1:7001"), (2, "node-2:7001")]);
        assert_eq!(cached(&peers), [1], "node 2 back: connected anew when used");
        peers.link(2, "node-2:7001").unwrap();
        peers.begin_round(7, both);
        assert!(
            cached(&peers).is_empty(),
            "this node missed rounds: every connection anew"
        );
    }
}

//! Sending a message to a neighbour: one client stream of frames per message (fed at
//! the pace the shaper says), over a connection kept per neighbour address.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use wdml_proto::{Frame, peer_exchange_client::PeerExchangeClient};

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
#[derive(Default)]
pub struct PeerClients {
    channels: HashMap<String, Channel>,
}

/// The largest frame this node will decode from a peer, headers included.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

impl PeerClients {
    /// A (lazily connected) channel to `address`.
    pub fn channel(&mut self, address: &str) -> Result<Channel, Status> {
        if let Some(channel) = self.channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::invalid_argument(format!("bad peer address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        self.channels.insert(address.to_string(), channel.clone());
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

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    payload: AtomicU64,
    wire: AtomicU64,
}

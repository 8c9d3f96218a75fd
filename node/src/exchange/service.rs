//! The peer service: receives a neighbour's messages, one after another on one
//! stream, each as frames; validates every frame and the reassembled payload, files
//! the message in the mailbox (which judges the round and the token) and answers it
//! with a receipt. The first bad frame or refused message ends the stream with a
//! status naming the cause; the round carries on with the messages that were good,
//! and the sender opens a new stream for its next message.
//!
//! Over mutual TLS a frame is accepted only if its `sender` is the node the
//! connection's certificate names: nobody speaks for another node. A stream that goes
//! quiet is dropped after [`IDLE_TIMEOUT`]: in the middle of a message with
//! `DEADLINE_EXCEEDED`, between messages without error.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::warn;
use wdml_proto::{Encoding, Frame, Receipt, peer_exchange_server::PeerExchange};
use wdml_transport::{self as transport, Caller, Identity};

use super::codec::{self, Encoded};
use super::mailbox::{Delivered, Mailbox};

/// What every message in this run must look like.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub run_id: String,
    /// This node's id: a node never receives its own predictions.
    pub me: u32,
    pub nodes: u32,
    pub rows: u32,
    pub cols: u32,
    pub max_message_bytes: u64,
    /// The run's encoding (the algorithm's: parameters travel in f32).
    pub encoding: Encoding,
    /// Entries kept per row when the run's encoding is top-k; 0 otherwise.
    pub top_k: u32,
}

/// The tonic service.
#[derive(Clone)]
pub struct PeerService {
    expect: Arc<Expectation>,
    mailbox: Arc<Mailbox>,
    /// Becomes true when the node stops serving: streams waiting for a next message
    /// end then, so that the server's graceful shutdown need not wait out their idle
    /// limit (a neighbour still running keeps its stream open).
    closing: watch::Receiver<bool>,
}

/// Ends every stream of a [`PeerService`] that waits between messages.
pub struct Closer(watch::Sender<bool>);

impl Closer {
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

impl PeerService {
    pub fn new(expect: Expectation, mailbox: Arc<Mailbox>) -> (Self, Closer) {
        let (closer, closing) = watch::channel(false);
        let service = PeerService {
            expect: Arc::new(expect),
            mailbox,
            closing,
        };
        (service, Closer(closer))
    }

    /// The stream's next message, delivered to the mailbox: its receipt, or `None` when
    /// the stream ended (or stayed quiet for [`IDLE_TIMEOUT`], or the node is closing)
    /// before another message began.
    async fn receive(&self, frames: &mut Streaming<Frame>, caller: &Caller) -> Result<Option<Receipt>, Status> {
        let mut closing = self.closing.clone();
        let first = tokio::select! {
            first = tokio::time::timeout(IDLE_TIMEOUT, frames.message()) => match first {
                Ok(Ok(first)) => first,
                // A frame too large to decode is a message refused, not the end of the
                // stream: taken for one, it went unanswered, unlogged and uncounted,
                // and its sender's stream ended with status OK.
                Ok(Err(status)) if oversized(&status) => return Err(frame_too_large(&status)),
                // Between messages, a stream the sender reset (it gave up on its link,
                // or exited) or the idle limit ends the stream, not a message.
                Ok(Err(status)) => {
                    tracing::debug!(peer = ?caller.remote, "stream ended between messages: {}", status.message());
                    None
                }
                Err(_) => None,
            },
            // A dropped Closer never closes (an error here, which disables the branch).
            Ok(_) = closing.wait_for(|closing| *closing) => None,
        };
        let Some(first) = first else { return Ok(None) };
        check_sender(&first, caller)?;
        // Stateless checks first (header, frames, values), then the stateful one
        // (does this round still take messages?) on delivery.
        let mut message = Assembler::new(&self.expect);
        let mut complete = message.push(first)?;
        while !complete {
            // A sender whose radio gave up on a frame ends the stream early: the
            // message was lost on the air, which is no fault of the message.
            let frame = next_frame(frames).await?.ok_or_else(|| {
                Status::data_loss(format!(
                    "stream ended after {} of {} frames",
                    message.received, message.count
                ))
            })?;
            complete = message.push(frame)?;
        }
        let count = message.count;
        let delivered = message.finish()?;
        let round = delivered.round;
        self.mailbox.deliver(delivered)?;
        Ok(Some(Receipt {
            frames: count,
            accepted: true,
            round,
        }))
    }

    /// Answers the messages of one stream until it ends; a refusal ends it with its
    /// status (the cause kept from a caller without a certificate).
    async fn serve(
        self,
        mut frames: Streaming<Frame>,
        caller: Caller,
        receipts: mpsc::Sender<Result<Receipt, Status>>,
    ) {
        let peer = caller.remote;
        // A sender that reads no receipts (its flow-control window full) gets its
        // stream ended rather than holding this task.
        let answer = |answer| tokio::time::timeout(IDLE_TIMEOUT, receipts.send(answer));
        loop {
            let refusal = match self.receive(&mut frames, &caller).await {
                Ok(Some(receipt)) => {
                    if !matches!(answer(Ok(receipt)).await, Ok(Ok(()))) {
                        return;
                    }
                    continue;
                }
                Ok(None) => return,
                Err(status) if status.code() == Code::DataLoss => {
                    tracing::debug!(?peer, "a message lost on the radio: {}", status.message());
                    status
                }
                Err(status) => {
                    let from = caller
                        .identity
                        .map_or("an unauthenticated peer".to_string(), |i| i.to_string());
                    warn!(?peer, code = ?status.code(), "rejected a message from {from}: {}", status.message());
                    self.mailbox.count_rejected();
                    caller.refuse(status.code(), status.message())
                }
            };
            let _ = answer(Err(refusal)).await;
            return;
        }
    }
}

/// Reassembles one message from its frames, checking each as it comes: the first
/// against the run ([`Expectation`]), every later one against the first. The peer
/// service feeds it from a stream; the fuzzer (`fuzz/`) from arbitrary bytes.
pub struct Assembler<'a> {
    expect: &'a Expectation,
    first: Option<Frame>,
    header: Option<Header>,
    payload: Vec<u8>,
    wire_bytes: u64,
    /// Frames taken so far, and how many the message has.
    pub received: u32,
    pub count: u32,
}

impl<'a> Assembler<'a> {
    pub fn new(expect: &'a Expectation) -> Self {
        Assembler {
            expect,
            first: None,
            header: None,
            payload: Vec::new(),
            wire_bytes: 0,
            received: 0,
            count: 0,
        }
    }

    /// Takes the next frame; `Ok(true)` once the message is complete.
    pub fn push(&mut self, mut frame: Frame) -> Result<bool, Status> {
        match &self.header {
            None => {
                let header = check_header(&frame, self.expect)?;
                // Exact, and within max_message_bytes: checked by the header.
                self.payload.reserve_exact(frame.total_bytes as usize);
                self.count = frame.count;
                self.header = Some(header);
            }
            Some(header) => {
                if self.received >= self.count {
                    return Err(Status::invalid_argument(format!(
                        "more frames than the announced count {}",
                        self.count
                    )));
                }
                check_continuation(&frame, header, self.received)?;
            }
        }
        let total = self.header.as_ref().map_or(0, |h| h.total_bytes);
        if self.payload.len() as u64 + frame.data.len() as u64 > total {
            return Err(Status::invalid_argument("frames carry more bytes than total_bytes"));
        }
        self.wire_bytes += frame.encoded_len() as u64;
        self.payload.extend_from_slice(&frame.data);
        self.received += 1;
        if self.first.is_none() {
            frame.data = Default::default();
            self.first = Some(frame);
        }
        Ok(self.received == self.count)
    }

    /// The whole message, decoded and checked.
    pub fn finish(self) -> Result<Delivered, Status> {
        let (Some(first), Some(header)) = (self.first, self.header) else {
            return Err(Status::invalid_argument("empty stream: no frame"));
        };
        if self.received != self.count {
            return Err(Status::data_loss(format!(
                "stream ended after {} of {} frames",
                self.received, self.count
            )));
        }
        if self.payload.len() as u64 != first.total_bytes {
            return Err(Status::invalid_argument(format!(
                "frames carry {} bytes, total_bytes says {}",
                self.payload.len(),
                first.total_bytes
            )));
        }
        let encoded = Encoded {
            encoding: header.encoding(),
            rows: first.rows,
            cols: first.cols,
            scale: first.scale,
            offset: first.offset,
            top_k: self.expect.top_k,
            bytes: self.payload,
        };
        let values = codec::decode(&encoded).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Delivered {
            sender: first.sender,
            round: first.round,
            round_token: first.round_token,
            values,
            payload_bytes: first.total_bytes,
            wire_bytes: self.wire_bytes,
            arrived: None,
        })
    }
}

#[tonic::async_trait]
impl PeerExchange for PeerService {
    type StreamStream = ReceiverStream<Result<Receipt, Status>>;

    async fn stream(&self, request: Request<Streaming<Frame>>) -> Result<Response<Self::StreamStream>, Status> {
        let caller = transport::caller(&request);
        // One receipt ahead: a sender waits for each before its next message anyway.
        let (receipts, answers) = mpsc::channel(1);
        tokio::spawn(self.clone().serve(request.into_inner(), caller, receipts));
        Ok(Response::new(ReceiverStream::new(answers)))
    }
}

/// How long a stream may wait for its next frame before it is dropped. Frames are
/// paced by the emulated radio, so this is far longer than any frame's air time; a
/// sender does not reuse a stream quiet for half of it ([`super::client`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The next frame of a stream, within [`IDLE_TIMEOUT`].
async fn next_frame(frames: &mut Streaming<Frame>) -> Result<Option<Frame>, Status> {
    match tokio::time::timeout(IDLE_TIMEOUT, frames.message()).await {
        Ok(Err(status)) if oversized(&status) => Err(frame_too_large(&status)),
        Ok(frame) => frame,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no frame for {} s: the stream is dropped",
            IDLE_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether an error of the inbound stream is tonic's decoder refusing a frame over the
/// server's `max_decoding_message_size` (`OUT_OF_RANGE` for its length prefix,
/// `RESOURCE_EXHAUSTED` for what it inflates to): it reads no further than the prefix.
fn oversized(status: &Status) -> bool {
    matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted)
}

/// The refusal of a frame over the size limit: `RESOURCE_EXHAUSTED`, as for every
/// other oversized payload (a message over `max_message_bytes`).
fn frame_too_large(status: &Status) -> Status {
    Status::resource_exhausted(format!(
        "frame too large: {}; a message must come in smaller frames",
        status.message()
    ))
}

/// Over mutual TLS, only node k speaks for node k.
fn check_sender(frame: &Frame, caller: &Caller) -> Result<(), Status> {
    match caller.identity {
        None => Ok(()),
        Some(Identity::Node(id)) if id == frame.sender => Ok(()),
        Some(identity) => Err(Status::permission_denied(format!(
            "the frame names sender {}, but this connection's certificate is {identity}'s",
            frame.sender
        ))),
    }
}

/// The header fields every frame of one message repeats.
#[derive(Clone, Debug, PartialEq)]
struct Header {
    run_id: String,
    round: u32,
    round_token: u64,
    sender: u32,
    encoding: i32,
    rows: u32,
    cols: u32,
    scale: u32,
    offset: u32,
    count: u32,
    total_bytes: u64,
}

impl Header {
    fn of(frame: &Frame) -> Self {
        Header {
            run_id: frame.run_id.clone(),
            round: frame.round,
            round_token: frame.round_token,
            sender: frame.sender,
            encoding: frame.encoding,
            rows: frame.rows,
            cols: frame.cols,
            // Compared bit for bit: a NaN must still equal itself here.
            scale: frame.scale.to_bits(),
            offset: frame.offset.to_bits(),
            count: frame.count,
            total_bytes: frame.total_bytes,
        }
    }

    fn encoding(&self) -> Encoding {
        Encoding::try_from(self.encoding).unwrap_or(Encoding::Unspecified)
    }
}

/// Checks a message's first frame against the run: who may send, the encoding, the
/// shape, the size. Stateless; the round is the mailbox's business.
fn check_header(frame: &Frame, expect: &Expectation) -> Result<Header, Status> {
    if frame.run_id != expect.run_id {
        return Err(Status::failed_precondition(format!(
            "message for run {:?}, this node is in run {:?}",
            frame.run_id, expect.run_id
        )));
    }
    if frame.sender >= expect.nodes || frame.sender == expect.me {
        return Err(Status::permission_denied(format!(
            "unknown sender {}: the peers of node {} are {} except itself",
            frame.sender,
            expect.me,
            match expect.nodes {
                1 => "node 0".to_string(),
                n => format!("nodes 0 to {}", n - 1),
            }
        )));
    }
    let encoding = Encoding::try_from(frame.encoding).unwrap_or(Encoding::Unspecified);
    let Some(want) = codec::payload_bytes(encoding, frame.rows, frame.cols, expect.top_k) else {
        return Err(Status::invalid_argument(format!(
            "undecodable encoding {}: expected F32, F16, Q8, Q4 or TOPK",
            frame.encoding
        )));
    };
    // Every message of a run is in its encoding: a decodable other one would be read
    // with another precision (or, for top-k, another k) than the run's accounting says.
    if encoding != expect.encoding {
        return Err(Status::invalid_argument(format!(
            "encoding {encoding}: this run's messages are {}",
            expect.encoding
        )));
    }
    if (frame.rows, frame.cols) != (expect.rows, expect.cols) {
        return Err(Status::invalid_argument(format!(
            "wrong shape {}×{}: expected {}×{} (public batch × classes)",
            frame.rows, frame.cols, expect.rows, expect.cols
        )));
    }
    if frame.total_bytes > expect.max_message_bytes {
        return Err(Status::resource_exhausted(format!(
            "message of {} bytes exceeds the limit of {} bytes",
            frame.total_bytes, expect.max_message_bytes
        )));
    }
    if frame.total_bytes != want {
        return Err(Status::invalid_argument(format!(
            "total_bytes {} does not match {}×{} values in {encoding} ({want} bytes)",
            frame.total_bytes, frame.rows, frame.cols
        )));
    }
    if frame.count == 0 || u64::from(frame.count) > frame.total_bytes {
        return Err(Status::invalid_argument(format!(
            "frame count {} is impossible for {} bytes",
            frame.count, frame.total_bytes
        )));
    }
    if frame.index != 0 {
        return Err(Status::invalid_argument(format!(
            "first frame has index {}, expected 0",
            frame.index
        )));
    }
    Ok(Header::of(frame))
}

/// A later frame must repeat the first frame's header and come in order.
fn check_continuation(frame: &Frame, header: &Header, index: u32) -> Result<(), Status> {
    if Header::of(frame) != *header {
        return Err(Status::invalid_argument(format!(
            "frame {index} does not repeat the message header"
        )));
    }
    if frame.index != index {
        return Err(Status::invalid_argument(format!(
            "frame {} arrived where frame {index} was due",
            frame.index
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::codec::{Envelope, MessageShape, encode, frames};

    fn expect() -> Expectation {
        Expectation {
            run_id: "run".into(),
            me: 0,
            nodes: 3,
            rows: 2,
            cols: 3,
            max_message_bytes: 1 << 20,
            encoding: Encoding::F32,
            top_k: 0,
        }
    }

    fn good() -> Frame {
        let e = encode(
            &[0.5; 6],
            MessageShape {
                rows: 2,
                cols: 3,
                encoding: Encoding::F32,
                top_k: 0,
            },
        );
        frames(
            &Envelope {
                run_id: "run".into(),
                round: 0,
                round_token: 1,
                sender: 1,
            },
            &e,
            1500,
        )
        .remove(0)
    }

    #[test]
    fn header_checks_name_the_cause() {
        assert!(check_header(&good(), &expect()).is_ok());
        // A change that spoils a good frame, and the code it must earn.
        type Spoil = fn(&mut Frame);
        let cases: [(Spoil, Code); 10] = [
            (|f| f.run_id = "other".into(), Code::FailedPrecondition),
            (|f| f.sender = 0, Code::PermissionDenied),
            (|f| f.sender = 9, Code::PermissionDenied),
            (|f| f.encoding = 42, Code::InvalidArgument),
            // Decodable, but not the run's: 6 values in q8 are 6 bytes, as total_bytes
            // says, and still refused.
            (
                |f| {
                    f.encoding = Encoding::Q8 as i32;
                    f.total_bytes = 6;
                },
                Code::InvalidArgument,
            ),
            (|f| f.rows = 3, Code::InvalidArgument),
            (|f| f.total_bytes = 1 << 30, Code::ResourceExhausted),
            (|f| f.total_bytes = 23, Code::InvalidArgument),
            (|f| f.count = 0, Code::InvalidArgument),
            (|f| f.index = 1, Code::InvalidArgument),
        ];
        for (i, (mutate, code)) in cases.iter().enumerate() {
            let mut frame = good();
            mutate(&mut frame);
            assert_eq!(check_header(&frame, &expect()).unwrap_err().code(), *code, "case {i}");
        }
    }

    #[test]
    fn a_q4_frame_is_half_a_byte_a_value_and_nothing_else() {
        let q4 = |values: &[f32]| {
            let e = encode(
                values,
                MessageShape {
                    rows: 2,
                    cols: 3,
                    encoding: Encoding::Q4,
                    top_k: 0,
                },
            );
            let envelope = Envelope {
                run_id: "run".into(),
                round: 0,
                round_token: 1,
                sender: 1,
            };
            frames(&envelope, &e, 1500).remove(0)
        };
        let q4_run = Expectation {
            encoding: Encoding::Q4,
            ..expect()
        };
        let frame = q4(&[0.0, 0.1, 0.2, 0.3, 0.4, 1.0]);
        assert_eq!(frame.total_bytes, 3);
        assert!(check_header(&frame, &q4_run).is_ok());
        let mut long = frame.clone();
        long.total_bytes = 6;
        assert_eq!(check_header(&long, &q4_run).unwrap_err().code(), Code::InvalidArgument);
        // Decoded within half a step of (max − min)/15.
        let encoded = codec::Encoded {
            encoding: Encoding::Q4,
            rows: 2,
            cols: 3,
            scale: frame.scale,
            offset: frame.offset,
            top_k: 0,
            bytes: frame.data.clone(),
        };
        let decoded = codec::decode(&encoded).unwrap();
        for (a, b) in [0.0, 0.1, 0.2, 0.3, 0.4, 1.0].iter().zip(&decoded) {
            assert!((a - b).abs() <= 1.0 / 30.0 + 1e-6, "{a} vs {b}");
        }
        // A payload of the wrong length for its shape is refused by the decoder too.
        let short = codec::Encoded {
            bytes: vec![0; 2],
            ..encoded
        };
        assert!(codec::decode(&short).is_err());
    }

    #[test]
    fn only_the_certified_node_speaks_for_itself() {
        let caller = |identity| Caller { remote: None, identity };
        let frame = good(); // sender 1
        assert!(check_sender(&frame, &caller(Some(Identity::Node(1)))).is_ok());
        assert!(
            check_sender(&frame, &caller(None)).is_ok(),
            "plaintext: nobody can prove anything"
        );
        for other in [Identity::Node(2), Identity::Observer, Identity::Coordinator] {
            let status = check_sender(&frame, &caller(Some(other))).unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{other}");
        }
    }

    #[test]
    fn continuation_must_repeat_the_header_in_order() {
        let first = good();
        let header = Header::of(&first);
        let mut next = first.clone();
        next.index = 1;
        assert!(check_continuation(&next, &header, 1).is_ok());
        assert!(check_continuation(&next, &header, 2).is_err());
        next.round_token = 2;
        assert!(check_continuation(&next, &header, 1).is_err());
    }
}

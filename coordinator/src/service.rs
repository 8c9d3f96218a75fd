//! The coordinator's gRPC service: Join, the Sync stream, Leave and Watch. Each
//! handler checks who is calling (the identity its certificate proves) and translates
//! between gRPC and the state ([`crate::state::Shared`]), which validates what it
//! receives, changes, and wakes the round driver; nothing of the run is kept here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{error, warn};
use wdml_proto::{
    CoordinatorEvent, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, NodeEvent, RunEvent, WatchRequest,
    coordinator_server::Coordinator, node_event::Event, run_event,
};
use wdml_transport::{self as transport, Identity};

use crate::members::{Presence, Proof};
use crate::state::{Flow, Shared};

/// How long a new Sync stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The tonic service.
pub(crate) struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        CoordinatorService { shared }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let caller = transport::caller(&request);
        let request = request.into_inner();
        caller.require(Identity::Node(request.node_id))?;
        let proof = if caller.is_authenticated() {
            Proof::Certificate
        } else {
            Proof::None
        };
        let session = transport::random_secret().map_err(|e| {
            error!("the operating system's random source failed: {e}");
            Status::internal("the coordinator cannot make a session now")
        })?;
        let model = self
            .shared
            .join(&request, session, proof)
            .map_err(|status| caller.refuse(status.code(), status.message()))?;
        Ok(Response::new(JoinResponse {
            session,
            settings: Some(self.shared.config.settings.clone()),
            model,
            protocol_version: wdml_proto::PROTOCOL_VERSION,
            data_contract: wdml_proto::DATA_CONTRACT,
        }))
    }

    type SyncStream = EventStream<CoordinatorEvent>;

    async fn sync(&self, request: Request<Streaming<NodeEvent>>) -> Result<Response<Self::SyncStream>, Status> {
        let caller = transport::caller(&request);
        let mut inbound = request.into_inner();
        // A stream that never says who it is must not be held open.
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| caller.refuse(Code::DeadlineExceeded, "no Hello within 5 s of opening the stream"))??;
        let hello = match first {
            Some(NodeEvent {
                event: Some(Event::Hello(hello)),
            }) => hello,
            _ => {
                return Err(caller.refuse(
                    Code::InvalidArgument,
                    "the first message on a Sync stream must be Hello",
                ));
            }
        };
        caller.require(Identity::Node(hello.node_id))?;
        // Room for a few rounds of events: the node drains it continuously.
        let (outbox, rx) = mpsc::channel(64);
        let connection = self
            .shared
            .attach(&hello, outbox)
            .map_err(|status| caller.refuse(status.code(), status.message()))?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let id = hello.node_id;
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(event)) => match shared.handle_event(id, connection, event) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Leave(reason)) => {
                            shared.remove(id, Some(connection), Presence::Left, &reason);
                            return;
                        }
                        Err(status) => {
                            warn!(node = id, "closing sync stream: {}", status.message());
                            // The member is told why: the stream ends with this status.
                            shared.refuse_stream(id, connection, status.clone());
                            break format!("sent an invalid event: {}", status.message());
                        }
                    },
                    Ok(None) => break "closed its sync stream".to_string(),
                    Err(status) => break format!("sync stream broke: {}", status.message()),
                }
            };
            shared.remove(id, Some(connection), Presence::Gone, &reason);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let caller = transport::caller(&request);
        let request = request.into_inner();
        caller.require(Identity::Node(request.node_id))?;
        self.shared
            .leave(request.node_id, request.session, &request.reason)
            .map_err(|status| caller.refuse(status.code(), status.message()))?;
        Ok(Response::new(LeaveResponse {}))
    }

    type WatchStream = EventStream<RunEvent>;

    async fn watch(&self, _request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        // Any member of the run may watch (with TLS, the handshake already refused
        // everyone else). The stream ends right after RunFinished, so a watcher never
        // holds the server open once the run is over.
        let mut events = self.shared.watchers.subscribe();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let last = matches!(event.event, Some(run_event::Event::RunFinished(_)));
                        if tx.send(Ok(event)).await.is_err() || last {
                            return;
                        }
                    }
                    // A watcher too slow to keep up misses events, not the end.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

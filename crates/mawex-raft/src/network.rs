//! The Raft RPCs between masters over gRPC: [`GrpcNetwork`] calls the peers (one cached
//! channel each), [`raft_service`] answers them, on the port the master serves clients on
//! (`mawex_server::Server::add_service`) or any other.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use mawex_api::{AuthChannel, ChannelConfig};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{open, seal};
use crate::identity::{parse_from, NodeIdentity, NodeNetwork, FROM_KEY, INCARNATION_KEY, TO_KEY};
use crate::{MasterNode, MasterRaft, MasterStateMachine};

use crate::proto;
use proto::raft_peer_client::RaftPeerClient;
use proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use proto::{Frame, SnapshotChunk};

/// The largest message between peers: a batch of appended entries is bounded by openraft's
/// `max_payload_entries`, and each entry by the master's own limits.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Snapshot bytes a chunk carries when openraft does not say.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest snapshot a node accepts from a peer.
const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

fn what(rpc: &'static str) -> impl Fn() -> String {
    move || format!("a {rpc} message")
}

/// The service `node` answers its peers' Raft RPCs with; serve it on a tonic server (the
/// master's own, through `Server::add_service_for(Role::Peer, …)`, or one of its own). A
/// caller that comes with another disk than the one its id is known by is refused (see
/// [`crate::NodeIdentity`]).
pub fn raft_service(node: &MasterNode) -> RaftPeerServer<RaftService> {
    RaftPeerServer::new(RaftService {
        raft: node.raft().clone(),
        identity: node.identity().clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Answers the Raft RPCs of a node's peers (see [`raft_service`]).
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<MasterRaft, MasterStateMachine>,
    identity: NodeIdentity,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("node", self.raft.node_id())
            .finish()
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], rpc: &'static str) -> Result<T, Status> {
    open(bytes, &what(rpc)).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl RaftService {
    /// Refuses a caller that comes with another disk than the one its id is known by. A
    /// caller that does not say who it is (not a `MasterNode`'s network) is not checked.
    fn admit(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let read = |key: &str| match metadata.get(key) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .ok()
                .and_then(parse_from)
                .map(Some)
                .ok_or_else(|| Status::invalid_argument(format!("a malformed {key}"))),
        };
        let Some((peer, incarnation)) = read(FROM_KEY)? else {
            return Ok(());
        };
        // A caller that knew this node by another disk: this node is the one that lost it.
        if let Some(expected) = read(TO_KEY)? {
            self.identity
                .check_known_as(peer, expected)
                .map_err(Status::failed_precondition)?;
        }
        self.identity
            .check(peer, incarnation)
            .map_err(Status::failed_precondition)
    }

    /// `value` sealed as the answer to `rpc`, with this node's incarnation.
    fn reply<T: Serialize>(&self, value: &T, rpc: &'static str) -> Result<Response<Frame>, Status> {
        let body = seal(value, &what(rpc)).map_err(|e| Status::internal(e.to_string()))?;
        let mut response = Response::new(Frame { body: body.into() });
        response
            .metadata_mut()
            .insert(INCARNATION_KEY, self.identity.incarnation().into());
        Ok(response)
    }
}

#[tonic::async_trait]
impl RaftPeer for RaftService {
    async fn append_entries(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.admit(request.metadata())?;
        let rpc: AppendEntriesRequest<MasterRaft> =
            decode(&request.into_inner().body, "AppendEntries")?;
        self.reply(&self.raft.append_entries(rpc).await, "AppendEntries")
    }

    async fn vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.admit(request.metadata())?;
        let rpc: VoteRequest<MasterRaft> = decode(&request.into_inner().body, "Vote")?;
        self.reply(&self.raft.vote(rpc).await, "Vote")
    }

    async fn pre_vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.admit(request.metadata())?;
        let rpc: VoteRequest<MasterRaft> = decode(&request.into_inner().body, "PreVote")?;
        self.reply(&self.raft.pre_vote(rpc).await, "PreVote")
    }

    async fn transfer_leader(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.admit(request.metadata())?;
        let rpc: TransferLeaderRequest<MasterRaft> =
            decode(&request.into_inner().body, "TransferLeader")?;
        self.reply(
            &self.raft.handle_transfer_leader(rpc).await,
            "TransferLeader",
        )
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Frame>, Status> {
        self.admit(request.metadata())?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a snapshot with no chunk"))?;
        let (vote, meta): (VoteOf<MasterRaft>, SnapshotMetaOf<MasterRaft>) =
            decode(&first.head, "InstallSnapshot")?;
        let mut data = first.data.to_vec();
        while let Some(chunk) = chunks.message().await? {
            if data.len().saturating_add(chunk.data.len()) > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "a snapshot larger than {MAX_SNAPSHOT_BYTES} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let snapshot = SnapshotOf::<MasterRaft, Vec<u8>> {
            meta,
            snapshot: data,
        };
        self.reply(
            &self.raft.install_full_snapshot(vote, snapshot).await,
            "InstallSnapshot",
        )
    }
}

/// How a node calls its peers: gRPC to each member's address (`BasicNode::addr`, as
/// `host:port` or a URL), one channel per peer, made once and shared by every call to it.
/// [`GrpcNetwork::with_config`] calls them over TLS (a `host:port` address then means
/// `https://`) and sends a token, for peers whose servers require one (a `peer` token:
/// `mawex_server::Server::add_service_for`).
#[derive(Debug, Clone, Default)]
pub struct GrpcNetwork {
    config: ChannelConfig,
    channels: Arc<Mutex<HashMap<u64, (String, AuthChannel)>>>,
    /// The node's identity, once its `MasterNode` gave it.
    identity: Arc<OnceLock<NodeIdentity>>,
}

impl NodeNetwork for GrpcNetwork {
    fn attach(&mut self, identity: NodeIdentity) {
        // A network is a node's own: a second node's identity is not taken.
        let _ = self.identity.set(identity);
    }
}

impl GrpcNetwork {
    /// A network in plain text without a token, with no channel yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A network that calls its peers with `config`: its TLS settings and its token (the
    /// message limit stays the Raft link's own).
    pub fn with_config(config: ChannelConfig) -> Self {
        GrpcNetwork {
            config,
            ..Self::default()
        }
    }

    /// The channel to `target` at `addr`: the cached one, or a new one if the address changed.
    fn channel(&self, target: u64, addr: &str) -> Result<AuthChannel, String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known, channel)) = channels.get(&target) {
            if known == addr {
                return Ok(channel.clone());
            }
        }
        let url = match (addr.contains("://"), self.config.tls.is_some()) {
            (true, _) => addr.to_owned(),
            (false, true) => format!("https://{addr}"),
            (false, false) => format!("http://{addr}"),
        };
        let channel = self
            .config
            .connect_lazy(&url)
            .map_err(|e| format!("node {target}'s address {addr:?}: {e}"))?;
        channels.insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<MasterRaft> for GrpcNetwork {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcPeer {
        let client = self.channel(target, &node.addr).map(|channel| {
            RaftPeerClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        GrpcPeer {
            target,
            client,
            identity: self.identity.get().cloned(),
        }
    }
}

/// The calls of one node to one peer (see [`GrpcNetwork`]).
#[derive(Debug)]
pub struct GrpcPeer {
    target: u64,
    client: Result<RaftPeerClient<AuthChannel>, String>,
    identity: Option<NodeIdentity>,
}

fn unreachable(reason: impl ToString) -> Unreachable<MasterRaft> {
    Unreachable::from_string(reason)
}

/// What a failed call to peer `target` tells openraft: a call that ran out of time (or was
/// cut short) is a network error, tried again at the next heartbeat; any other failure of
/// the transport, or an error of the peer's node (it stopped), makes the peer unreachable.
fn transport_error(target: u64, status: &Status) -> RPCError<MasterRaft> {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Network(
            NetworkError::from_string(format!("node {target}: timed out: {status}")),
        ),
        _ => RPCError::Unreachable(unreachable(format!("node {target}: {status}"))),
    }
}

impl GrpcPeer {
    fn client(&self) -> Result<RaftPeerClient<AuthChannel>, Unreachable<MasterRaft>> {
        self.client.clone().map_err(unreachable)
    }

    /// `request` carrying this node's id and incarnation.
    fn introduced<T>(&self, mut request: Request<T>) -> Request<T> {
        let Some(identity) = &self.identity else {
            return request;
        };
        if let Ok(value) = identity.caller_value().parse() {
            request.metadata_mut().insert(FROM_KEY, value);
        }
        if let Some(value) = identity
            .callee_value(self.target)
            .and_then(|v| v.parse().ok())
        {
            request.metadata_mut().insert(TO_KEY, value);
        }
        request
    }

    /// The failure of a call: a peer that refuses this node's disk is recorded, as a
    /// transport failure otherwise.
    fn failed(&self, status: &Status) -> RPCError<MasterRaft> {
        if let (Some(identity), tonic::Code::FailedPrecondition) = (&self.identity, status.code()) {
            identity.refused_by(self.target, status.message());
        }
        transport_error(self.target, status)
    }

    /// Refuses the answer of a peer that came with another disk than the one it is known by.
    fn admit(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), Unreachable<MasterRaft>> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let Some(incarnation) = metadata
            .get(INCARNATION_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        else {
            return Ok(());
        };
        identity
            .check(self.target, incarnation)
            .map_err(unreachable)
    }

    /// One request-and-answer call: `rpc` sealed, the answer opened; a remote error that
    /// is not the call's own (the peer's node stopped) counts as unreachable.
    async fn call<Q, A, E, F, Fut>(
        &self,
        rpc: &'static str,
        request: &Q,
        option: &RPCOption,
        send: F,
    ) -> Result<A, RPCError<MasterRaft>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: DeserializeOwned + std::fmt::Display,
        F: FnOnce(RaftPeerClient<AuthChannel>, Request<Frame>) -> Fut,
        Fut: Future<Output = Result<Response<Frame>, Status>>,
    {
        let body =
            seal(request, &what(rpc)).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = self.introduced(Request::new(Frame { body: body.into() }));
        request.set_timeout(option.soft_ttl());
        let answer = send(self.client()?, request)
            .await
            .map_err(|status| self.failed(&status))?;
        self.admit(answer.metadata())?;
        let answer: Result<A, E> = open(&answer.into_inner().body, &what(rpc))
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::Unreachable(unreachable(format!("node {}: {e}", self.target))))
    }
}

impl RaftNetworkV2<MasterRaft> for GrpcPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MasterRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MasterRaft>, RPCError<MasterRaft>> {
        self.call::<_, _, RaftError<MasterRaft>, _, _>(
            "AppendEntries",
            &rpc,
            &option,
            |mut client, request| async move { client.append_entries(request).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MasterRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<MasterRaft>, RPCError<MasterRaft>> {
        self.call::<_, _, RaftError<MasterRaft>, _, _>(
            "Vote",
            &rpc,
            &option,
            |mut client, request| async move { client.vote(request).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<MasterRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<MasterRaft>, RPCError<MasterRaft>> {
        self.call::<_, _, RaftError<MasterRaft>, _, _>(
            "PreVote",
            &rpc,
            &option,
            |mut client, request| async move { client.pre_vote(request).await },
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<MasterRaft>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<MasterRaft>, RPCError<MasterRaft>> {
        self.call::<_, _, Fatal<MasterRaft>, _, _>(
            "TransferLeader",
            &rpc,
            &option,
            |mut client, request| async move { client.transfer_leader(request).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<MasterRaft>,
        snapshot: SnapshotOf<MasterRaft, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<MasterRaft>, StreamingError<MasterRaft>> {
        let head = seal(&(vote, snapshot.meta), &what("InstallSnapshot"))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let size = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK_BYTES)
            .clamp(1, MAX_MESSAGE_BYTES / 2);
        // Chunks are slices of the one buffer, sent as the stream is read.
        let data = Bytes::from(snapshot.snapshot);
        let count = data.len().div_ceil(size).max(1);
        let mut head = Some(Bytes::from(head));
        let chunks = futures::stream::iter((0..count).map(move |i| {
            let start = i.saturating_mul(size).min(data.len());
            let end = start.saturating_add(size).min(data.len());
            SnapshotChunk {
                head: head.take().unwrap_or_default(),
                data: data.slice(start..end),
            }
        }));
        let mut client = self.client()?;
        // The whole transfer and its install are bounded (`NodeConfig::snapshot_timeout`):
        // a peer that stops reading does not hold the replication to it for ever.
        let within = option.soft_ttl();
        let answer = tokio::select! {
            answer = tokio::time::timeout(
                within,
                client.install_snapshot(self.introduced(Request::new(chunks))),
            ) => answer,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let answer = answer
            .map_err(|_| {
                StreamingError::Network(NetworkError::from_string(format!(
                    "node {}: the snapshot was not sent and installed within {within:?}",
                    self.target
                )))
            })?
            .map_err(|status| match self.failed(&status) {
                RPCError::Network(e) => StreamingError::Network(e),
                RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?;
        self.admit(answer.metadata())?;
        let answer: Result<SnapshotResponse<MasterRaft>, Fatal<MasterRaft>> =
            open(&answer.into_inner().body, &what("InstallSnapshot"))
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| {
            StreamingError::Unreachable(unreachable(format!("node {}: {e}", self.target)))
        })
    }
}

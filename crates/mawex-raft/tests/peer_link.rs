//! The peers' link (`GrpcNetwork`) tells openraft why a call failed: a peer that does not
//! answer in time is a network error (tried again at the next heartbeat), one that cannot
//! be reached at all is unreachable; and a snapshot a peer does not take within the
//! snapshot timeout is given up rather than holding the replication to it for ever.

use std::time::{Duration, Instant};

use mawex_raft::{GrpcNetwork, MasterRaft};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, StreamingError};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::VoteRequest;
use openraft::storage::{Snapshot, SnapshotMeta};
use openraft::BasicNode;
use tokio::net::TcpListener;

/// A peer that accepts connections and never says a word.
async fn silent_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    addr
}

fn vote() -> VoteOf<MasterRaft> {
    VoteOf::<MasterRaft>::new(1, 1)
}

const TTL: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_peer_that_does_not_answer_in_time_is_a_network_error() {
    let mut peer = GrpcNetwork::new()
        .new_client(2, &BasicNode::new(silent_peer().await))
        .await;
    let started = Instant::now();
    let answer = peer
        .vote(VoteRequest::new(vote(), None), RPCOption::new(TTL))
        .await;
    assert!(matches!(answer, Err(RPCError::Network(_))), "{answer:?}");
    assert!(started.elapsed() < TTL * 4, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_peer_with_nothing_listening_is_unreachable() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        listener.local_addr().expect("an address").to_string()
    };
    let mut peer = GrpcNetwork::new()
        .new_client(2, &BasicNode::new(addr))
        .await;
    let answer = peer
        .vote(VoteRequest::new(vote(), None), RPCOption::new(TTL))
        .await;
    assert!(
        matches!(answer, Err(RPCError::Unreachable(_))),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_snapshot_a_peer_does_not_take_in_time_is_given_up() {
    let mut peer = GrpcNetwork::new()
        .new_client(2, &BasicNode::new(silent_peer().await))
        .await;
    let snapshot: SnapshotOf<MasterRaft, Vec<u8>> = Snapshot {
        meta: SnapshotMeta::default(),
        snapshot: vec![7; 3 * 1024 * 1024],
    };
    let started = Instant::now();
    let answer = peer
        .full_snapshot(
            vote(),
            snapshot,
            std::future::pending(),
            RPCOption::new(TTL),
        )
        .await;
    assert!(
        matches!(answer, Err(StreamingError::Network(_))),
        "{answer:?}"
    );
    assert!(started.elapsed() < TTL * 4, "{:?}", started.elapsed());
}

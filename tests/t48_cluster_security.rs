//! A cluster of masters deployed as it should be: every port speaks TLS only and checks
//! tokens; the masters call each other's Raft link over TLS with a `peer` token, and that
//! link refuses callers without one, or with a token of another role; the membership
//! service answers admin tokens only.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mawex::auth::{Role, TokenEntry, TokenStore, Tokens};
use mawex::{
    ChannelConfig, ClientTls, MasterConfig, MasterProxy, Outcome, RemoteConfig, RemoteMasterProxy,
    Server, ServerTls, TaskSpec,
};
use mawex_raft::{
    admin_service, raft_service, GrpcNetwork, MasterNode, MasterRaft, NodeConfig,
    RemoteClusterAdmin,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::VoteRequest;
use openraft::BasicNode;
use pki::new_pki;
use tokio::net::TcpListener;

const PEER: &str = "peer-secret";
const ADMIN: &str = "admin-secret";
const POD: &str = "pod-secret";

fn tokens() -> TokenStore {
    TokenStore::new(
        Tokens::new([
            TokenEntry::new("masters", Role::Peer, PEER),
            TokenEntry::new("ops", Role::Admin, ADMIN),
            TokenEntry::new("fleet", Role::Pod, POD),
        ])
        .unwrap(),
    )
}

/// TLS towards the masters, whose certificate names `localhost`.
fn tls(ca: &str, token: &str) -> ChannelConfig {
    ChannelConfig::default()
        .with_tls(ClientTls::new(ca.to_owned()).with_domain("localhost"))
        .with_token(token)
}

struct Node {
    node: MasterNode,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_speak_tls_with_peer_tokens_and_the_raft_link_refuses_other_callers() {
    let pki = new_pki();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(
            id,
            BasicNode::new(listener.local_addr().unwrap().to_string()),
        );
        listeners.insert(id, listener);
    }
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let mut config = NodeConfig::new(id);
        // Wide enough that TLS handshakes on a loaded machine do not look like a dead leader.
        config.election_timeout = (Duration::from_millis(1_000), Duration::from_millis(2_000));
        let network = GrpcNetwork::with_config(tls(&pki.ca, PEER));
        let master = MasterConfig::default();
        let max_payload = master.max_payload_bytes;
        let node = MasterNode::start(dirs[id as usize - 1].path(), config, network, master)
            .await
            .unwrap();
        let server = Server::over(
            Arc::new(node.client()),
            Arc::new(node.pod_connector()),
            max_payload,
        )
        .tls(ServerTls::new(pki.server.0.clone(), pki.server.1.clone()))
        .tokens(tokens())
        .add_service_for(Role::Peer, raft_service(&node))
        .add_service_for(Role::Admin, admin_service(node.admin()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        nodes.insert(id, Node { node, stop, served });
    }
    nodes[&1].node.initialize(members.clone()).await.unwrap();

    // The masters elect a leader over TLS, and a client with an admin token is served.
    let endpoints: Vec<String> = members
        .values()
        .map(|n| format!("https://{}", n.addr))
        .collect();
    let mut remote = RemoteConfig::default();
    remote.retry_for = Duration::from_secs(30);
    remote.channel = tls(&pki.ca, ADMIN);
    let client = RemoteMasterProxy::with_config(&endpoints, remote).unwrap();
    let spec = TaskSpec::new(group("secured"), "echo", "over tls");
    client.submit(spec.clone()).await.unwrap();
    let view = client.get(spec.id).await.unwrap();
    assert_eq!(view.spec.payload, spec.payload);

    // The Raft link of any node: a caller with a token of another role, or none, is refused.
    let addr = members[&1].addr.clone();
    let vote =
        || VoteRequest::<MasterRaft>::new(openraft::alias::VoteOf::<MasterRaft>::new(1, 9), None);
    for (token, refusal) in [
        (Some(POD), "needs the peer role"),
        (None, "a token is required"),
    ] {
        let config = match token {
            Some(token) => tls(&pki.ca, token),
            None => ChannelConfig::default()
                .with_tls(ClientTls::new(pki.ca.clone()).with_domain("localhost")),
        };
        let mut peer = GrpcNetwork::with_config(config)
            .new_client(1, &BasicNode::new(addr.clone()))
            .await;
        let answer = peer
            .vote(vote(), RPCOption::new(Duration::from_secs(5)))
            .await;
        let error = answer.expect_err("refused").to_string();
        assert!(error.contains(refusal), "{error}");
    }
    // Plain text to a node's port is refused too, whatever the token.
    let mut plain = GrpcNetwork::new()
        .new_client(1, &BasicNode::new(format!("http://{addr}")))
        .await;
    let started = Instant::now();
    assert!(plain
        .vote(vote(), RPCOption::new(Duration::from_secs(5)))
        .await
        .is_err());
    assert!(started.elapsed() < Duration::from_secs(10));

    // The membership service answers an admin token only.
    let endpoint = format!("https://{addr}");
    let members = RemoteClusterAdmin::new(&endpoint, &tls(&pki.ca, ADMIN))
        .unwrap()
        .members()
        .await
        .unwrap();
    assert_eq!(members.voters.len(), 3);
    let refused = RemoteClusterAdmin::new(&endpoint, &tls(&pki.ca, PEER))
        .unwrap()
        .remove(2)
        .await;
    assert!(
        matches!(&refused, Err(mawex::ApiError::PermissionDenied(why)) if why.contains("needs the admin role")),
        "{refused:?}"
    );

    // A pod with a pod token runs the task, through the same TLS ports.
    let (handlers, _, _) = instrumented();
    let pod = mawex::Pod::start(
        mawex::PodConfig::new(pod_id("p-secured"), vec![group("secured")]),
        Arc::new(mawex::InProcess::new(handlers)),
        Arc::new(mawex::GrpcPodConnector::with_config(&endpoints, tls(&pki.ca, POD)).unwrap()),
    )
    .unwrap();
    let result = client.await_result(spec.id).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("over tls".into()));
    pod.shutdown().await.unwrap();
    for (_, n) in nodes {
        let _ = n.stop.send(());
        n.served.await.unwrap();
        n.node.shutdown().await.unwrap();
    }
}

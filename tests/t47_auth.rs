//! Tokens with roles: every RPC of both services needs a token whose role allows it, client
//! and pod tokens are held to their groups, and a pod id belongs to the credential that
//! registered it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mawex::auth::{Role, TokenEntry, TokenStore, Tokens};
use mawex::pod::{PodConnector, PodHello};
use mawex::testing::proto;
use mawex::{
    ApiError, ChannelConfig, GrpcPodConnector, MasterProxy, RemoteConfig, RemoteMasterProxy,
    RunningServer, Server, TaskSpec,
};
use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Code;

const CLIENT: &str = "client-secret";
const BUILDS_CLIENT: &str = "builds-client-secret";
const ADMIN: &str = "admin-secret";
const POD: &str = "pod-secret";
const OTHER_POD: &str = "other-pod-secret";
const CACHE_POD: &str = "cache-pod-secret";
const VIEWER: &str = "viewer-secret";

fn tokens() -> Tokens {
    Tokens::new([
        TokenEntry::new("client", Role::Client, CLIENT),
        TokenEntry::new("builds-client", Role::Client, BUILDS_CLIENT).groups([group("builds")]),
        TokenEntry::new("admin", Role::Admin, ADMIN),
        TokenEntry::new("dashboard", Role::Viewer, VIEWER),
        TokenEntry::new("fleet", Role::Pod, POD)
            .groups([group("builds")])
            .pods(["builder-*"]),
        TokenEntry::new("other-fleet", Role::Pod, OTHER_POD).groups([group("builds")]),
        TokenEntry::new("cache-fleet", Role::Pod, CACHE_POD)
            .addresses(["*.cache.test:*"])
            .max_pods(1),
    ])
    .unwrap()
}

async fn serve(master: &TestMaster, tokens: TokenStore) -> RunningServer {
    Server::new(master.master())
        .tokens(tokens)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The role each RPC needs, written down here independently of the server's own table:
/// an RPC added to the protocol without a line here fails the test.
fn expected_role(path: &str) -> Role {
    let method = path.rsplit('/').next().unwrap();
    match method {
        "Submit" | "SubmitBatch" | "Get" | "Cancel" | "AwaitResult" | "List" | "StreamResults"
        | "SubmitGraph" | "GetGraph" | "CancelGraph" | "GetOutput" => Role::Client,
        "FailedSummary" | "RetryFailed" | "PurgeFailed" | "ConfigureGroup" | "GetGroupSettings"
        | "UpdatePending" | "CreateSchedule" | "ListSchedules" | "PauseSchedule"
        | "DeleteSchedule" | "FireBroadcast" | "PlanBroadcast" | "GetBroadcast"
        | "ListBroadcasts" | "WaitBroadcast" | "ListBroadcastLocks" | "ClearBroadcastLock"
        | "ListPods" | "ListGroups" | "History" | "DrainPod" => Role::Admin,
        "Session" => Role::Pod,
        other => panic!("{path}: no expected role for RPC {other}; add it to this table"),
    }
}

/// Whether an RPC changes nothing (a viewer may call it), written down here independently of
/// the server's own list.
fn reads_only(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap();
    matches!(
        method,
        "Get"
            | "AwaitResult"
            | "List"
            | "StreamResults"
            | "FailedSummary"
            | "GetGroupSettings"
            | "ListSchedules"
            | "PlanBroadcast"
            | "GetBroadcast"
            | "ListBroadcasts"
            | "WaitBroadcast"
            | "ListBroadcastLocks"
            | "History"
            | "GetGraph"
            | "GetOutput"
            | "ListPods"
            | "ListGroups"
    )
}

/// Every RPC path of the mawex services, from the descriptors the server publishes.
fn every_rpc() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        for service in file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths
}

/// Calls `path` with an empty message (every message decodes from zero bytes) and returns
/// the status code: what matters is whether the guard let the call through.
async fn call(channel: &Channel, path: &str, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(proto::Empty {});
    request.set_timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<proto::Empty, proto::Empty>::default();
    let path = PathAndQuery::from_str(path).unwrap();
    match grpc.unary(request, path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_token_whose_role_allows_it() {
    let master = TestMaster::start().await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect_lazy();
    let rpcs = every_rpc();
    assert!(rpcs.len() > 20, "both services' RPCs: {rpcs:?}");
    for path in &rpcs {
        let needed = expected_role(path);
        assert_eq!(
            call(&channel, path, None).await,
            Code::Unauthenticated,
            "{path}, no token"
        );
        assert_eq!(
            call(&channel, path, Some("made-up")).await,
            Code::Unauthenticated,
            "{path}, an unknown token"
        );
        for (secret, role) in [
            (CLIENT, Role::Client),
            (ADMIN, Role::Admin),
            (POD, Role::Pod),
            (VIEWER, Role::Viewer),
        ] {
            let allowed = match (role, needed) {
                (Role::Viewer, _) => reads_only(path),
                (_, Role::Client) => matches!(role, Role::Client | Role::Admin),
                (_, other) => role == other,
            };
            let code = call(&channel, path, Some(secret)).await;
            if allowed {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{path} with a {role} token was refused: {code:?}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{path} with a {role} token");
            }
        }
    }
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

fn remote(server: &RunningServer, token: &str) -> RemoteMasterProxy {
    let mut config = RemoteConfig::default();
    config.retry_for = Duration::from_secs(2);
    config.channel = config.channel.with_token(token);
    RemoteMasterProxy::with_config([server.endpoint()], config).unwrap()
}

fn pods(server: &RunningServer, token: &str) -> GrpcPodConnector {
    let config = ChannelConfig::default().with_token(token);
    GrpcPodConnector::with_config([server.endpoint()], config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_limited_to_groups_uses_only_those() {
    let master = TestMaster::start().await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let builds = remote(&server, BUILDS_CLIENT);
    let ack = builds
        .submit(TaskSpec::new(group("builds"), "noop", "x"))
        .await
        .expect("its own group");
    let refused = builds
        .submit(TaskSpec::new(group("deploys"), "noop", "x"))
        .await;
    assert!(
        matches!(&refused, Err(ApiError::PermissionDenied(m)) if m.contains("deploys")),
        "{refused:?}"
    );
    let other = remote(&server, ADMIN)
        .submit(TaskSpec::new(group("deploys"), "noop", "x"))
        .await
        .unwrap();
    assert!(builds.get(ack.id).await.is_ok());
    // Another group's task answers as a task that does not exist would.
    let missing = mawex::TaskId::new();
    for (theirs, nobodys) in [
        (
            builds.get(other.id).await.map(|_| ()),
            builds.get(missing).await.map(|_| ()),
        ),
        (
            builds.cancel(other.id).await.map(|_| ()),
            builds.cancel(missing).await.map(|_| ()),
        ),
        (
            builds.await_result(other.id).await.map(|_| ()),
            builds.await_result(missing).await.map(|_| ()),
        ),
    ] {
        assert!(matches!(theirs, Err(ApiError::NotFound(_))), "{theirs:?}");
        assert_eq!(
            format!("{theirs:?}").replace(&other.id.to_string(), "ID"),
            format!("{nobodys:?}").replace(&missing.to_string(), "ID"),
            "the same answer as for a task that does not exist"
        );
    }
    // Nor may it run a task after another group's task (it would get its output), not even
    // by naming that task's id in its own batch as a duplicate of one of its tasks.
    let after_theirs = builds
        .submit(TaskSpec::new(group("builds"), "noop", "x").after(other.id))
        .await;
    assert!(
        matches!(after_theirs, Err(ApiError::NotFound(_))),
        "{after_theirs:?}"
    );
    let decoy =
        TaskSpec::new(group("builds"), "noop", "d").with_dedup("k", Duration::from_secs(60));
    let mut disguised =
        TaskSpec::new(group("builds"), "noop", "d").with_dedup("k", Duration::from_secs(60));
    disguised.id = other.id;
    let smuggled = builds
        .submit_many(vec![
            decoy,
            disguised,
            TaskSpec::new(group("builds"), "noop", "x").after(other.id),
        ])
        .await;
    assert!(
        matches!(smuggled, Err(ApiError::NotFound(_))),
        "{smuggled:?}"
    );
    let graph = mawex::GraphSpec::new(
        vec![mawex::GraphNode::new(
            "n",
            TaskSpec::new(group("builds"), "noop", "x").after(other.id),
        )],
        Vec::new(),
    );
    let graph_refused = builds.submit_graph(graph).await;
    assert!(
        matches!(graph_refused, Err(ApiError::NotFound(_))),
        "{graph_refused:?}"
    );
    for refused in [
        builds.list(mawex::ListQuery::default()).await.map(|_| ()),
        builds
            .list(mawex::ListQuery::default().group(group("deploys")))
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(refused, Err(ApiError::PermissionDenied(_))),
            "{refused:?}"
        );
    }
    let page = builds
        .list(mawex::ListQuery::default().group(group("builds")))
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 1);
    assert!(matches!(
        builds.results(group("deploys"), None).await.map(|_| ()),
        Err(ApiError::PermissionDenied(_))
    ));
    drop((builds, other));
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_token_registers_only_its_groups_and_pods() {
    let master = TestMaster::start().await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let fleet = pods(&server, POD);
    let wrong_group = fleet
        .connect(PodHello::new(pod_id("builder-1"), vec![group("deploys")]))
        .await;
    let refusal = denied(wrong_group);
    assert!(refusal.contains("deploys"), "{refusal}");
    let wrong_id = fleet
        .connect(PodHello::new(pod_id("db-1"), vec![group("builds")]))
        .await;
    let refusal = denied(wrong_id);
    assert!(refusal.contains("db-1"), "{refusal}");
    let client = remote(&server, CLIENT);
    assert!(matches!(
        pods(&server, CLIENT)
            .connect(PodHello::new(pod_id("builder-1"), vec![group("builds")]))
            .await
            .map(|_| ()),
        Err(ApiError::PermissionDenied(_))
    ));
    drop(client);
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

/// Another credential cannot take over a pod id: its hello is refused, and the pod that
/// registered the id keeps its lease and records its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_credential_cannot_take_over_a_pod_id() {
    let master = TestMaster::start().await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let admin = remote(&server, ADMIN);
    let ack = admin
        .submit(TaskSpec::new(group("builds"), "noop", "x"))
        .await
        .unwrap();
    let owner = pods(&server, OTHER_POD)
        .connect(PodHello::new(
            pod_id("builder-shared"),
            vec![group("builds")],
        ))
        .await
        .unwrap();
    let mut owner_inbox = owner.inbox;
    let assigned = next_assignments(&mut owner_inbox).await;
    let attempt = assigned[0].attempt.attempt;
    let thief = pods(&server, POD)
        .connect(PodHello::new(
            pod_id("builder-shared"),
            vec![group("builds")],
        ))
        .await;
    let refusal = denied(thief);
    assert!(refusal.contains("another credential"), "{refusal}");
    // The owner still holds the lease and its result is recorded.
    owner
        .outbox
        .send(mawex::pod::PodMessage::Finished {
            attempt: mawex::pod::AttemptRef {
                task: ack.id,
                attempt,
            },
            outcome: Ok("mine".into()),
        })
        .unwrap();
    let result = admin.await_result(ack.id).await.unwrap();
    assert!(matches!(result.outcome, mawex::Outcome::Succeeded(ref out) if &out[..] == b"mine"));
    drop(owner.outbox);
    drop(Arc::new(admin));
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

/// The binding of a pod id to its credential is journaled: after a master restart another
/// credential still cannot take the id, and the owner can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_id_stays_bound_across_a_restart() {
    let master = TestMaster::start().await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let hello = || PodHello::new(pod_id("builder-durable"), vec![group("builds")]);
    drop(pods(&server, OTHER_POD).connect(hello()).await.unwrap());
    server.shutdown().await.unwrap();
    let dir = master.shutdown().await;

    let master = TestMaster::restart(dir, common::fast_config()).await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let thief = pods(&server, POD).connect(hello()).await;
    let refusal = denied(thief);
    assert!(refusal.contains("another credential"), "{refusal}");
    pods(&server, OTHER_POD)
        .connect(hello())
        .await
        .expect("the owner comes back");
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

/// The token file is watched: a token removed from it no longer admits new calls, and the
/// pod session it had opened ends; a token added to it works without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_token_file_revokes_and_admits() {
    use mawex::auth::hash_secret;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let line = |id: &str, role: &str, secret: &str| {
        format!(
            "[[token]]\nid = \"{id}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hash_secret(secret)
        )
    };
    std::fs::write(
        &path,
        line("fleet", "pod", POD) + &line("admin", "admin", ADMIN),
    )
    .unwrap();
    let store = TokenStore::new(Tokens::from_file(&path).unwrap());
    let watcher = store.watch(&path, Duration::from_millis(50));
    let master = TestMaster::start().await;
    let server = serve(&master, store).await;
    let session = pods(&server, POD)
        .connect(PodHello::new(pod_id("p-revoked"), vec![group("builds")]))
        .await
        .unwrap();
    let mut inbox = session.inbox;
    assert!(remote(&server, ADMIN)
        .get(mawex::TaskId::new())
        .await
        .is_err_and(|e| matches!(e, ApiError::NotFound(_))));

    // The pod token goes, a new admin secret comes.
    std::fs::write(&path, line("admin", "admin", "rotated-admin-secret")).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while inbox.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the revoked pod's session ended");
    wait_for("the rotated secret to be accepted", || {
        let proxy = remote(&server, "rotated-admin-secret");
        async move {
            matches!(
                proxy.get(mawex::TaskId::new()).await,
                Err(ApiError::NotFound(_))
            )
            .then_some(())
        }
    })
    .await;
    assert!(matches!(
        remote(&server, ADMIN).get(mawex::TaskId::new()).await,
        Err(ApiError::Unauthenticated(_))
    ));
    assert!(matches!(
        pods(&server, POD)
            .connect(PodHello::new(pod_id("p-revoked"), vec![group("builds")]))
            .await
            .map(|_| ()),
        Err(ApiError::Unauthenticated(_))
    ));
    drop(session.outbox);
    watcher.abort();
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

/// A pod may point others (broadcast pulls) only at itself: an advertised address must name
/// the IP the pod connected from, or match its token's `addresses`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_addresses_are_checked() {
    let master = TestMaster::start().await;
    let server = serve(&master, TokenStore::new(tokens())).await;
    let hello = |name: &str, address: &str| {
        let mut h = PodHello::new(pod_id(name), vec![group("builds")]);
        h.address = Some(address.to_owned());
        h
    };
    let fleet = pods(&server, POD);
    let elsewhere = fleet.connect(hello("builder-1", "10.9.9.9:873")).await;
    let m = denied(elsewhere);
    assert!(m.contains("advertises") && m.contains("127.0.0.1"), "{m}");
    let named = fleet.connect(hello("builder-1", "evil.example:873")).await;
    assert!(matches!(named, Err(ApiError::PermissionDenied(_))));
    let itself = fleet
        .connect(hello("builder-1", "127.0.0.1:873"))
        .await
        .expect("its own address");
    let cache = pods(&server, CACHE_POD);
    let listed = cache
        .connect(hello("cache-1", "eu.cache.test:873"))
        .await
        .expect("an address its token lists");
    assert!(matches!(
        cache
            .connect(hello("cache-2", "evil.example:873"))
            .await
            .map(|_| ()),
        Err(ApiError::PermissionDenied(_))
    ));
    drop((itself.outbox, listed.outbox));
    server.shutdown().await.unwrap();
    master.shutdown().await;
}

//! Three nodes, each serving the mawex client and pod services and the Raft service on one
//! port (`Server::over` a node's `ClusterProxy` and `ClusterPodConnector`). A client and a
//! pod given all three addresses find the leader by themselves, before and after the leader
//! is killed, and every task runs to its result.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    leader, nodes, serve_node, served_three, temporary_dirs, test_node_config, CLUSTER_DEADLINE,
};
use mawex_api::pod::{PodConnector, PodHello};
use mawex_api::{
    ApiError, GroupName, MasterProxy, Outcome, PodId, RemoteConfig, RemoteMasterProxy, TaskSpec,
    TaskState,
};
use mawex_core::MasterConfig;
use mawex_raft::{MasterNode, NodeConfig, RemoteClusterAdmin};
use mawex_sandbox::{HandlerRegistry, InProcess, TaskInput};
use mawex_worker::{Pod, PodConfig};
use openraft::rt::WatchReceiver;
use tokio::net::TcpListener;

/// Node `id`'s settings: pods' leases of 2 s, heartbeats every 200 ms.
fn settings(id: u64) -> (NodeConfig, MasterConfig) {
    let mut master = MasterConfig::default();
    master.lease_timeout = Duration::from_secs(2);
    master.heartbeat_interval = Duration::from_millis(200);
    (test_node_config(id), master)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_pods_follow_the_leader_through_a_fail_over() {
    let dirs = temporary_dirs(3);
    let group = GroupName::new("served").expect("a valid name");
    let (mut running, members) = served_three(&dirs, settings).await;
    let endpoints: Vec<String> = members
        .values()
        .map(|n| format!("http://{}", n.addr))
        .collect();
    let (first, _) = leader(&nodes(&running)).await;
    // A pod session that only tells the term (its group has no work).
    let probed = GroupName::new("probe").expect("a valid name");
    let first_term = running[&first]
        .node
        .pod_connector()
        .connect(PodHello::new(
            PodId::new("probe").expect("an id"),
            vec![probed.clone()],
        ))
        .await
        .expect("a session")
        .welcome
        .term;
    assert!(first_term > 0);

    // A follower answers NotLeader, naming the leader's address.
    let follower = running
        .keys()
        .copied()
        .find(|id| *id != first)
        .expect("a follower");
    let refused = running[&follower]
        .node
        .client()
        .get(mawex_api::TaskId::new())
        .await;
    assert_eq!(
        refused.err(),
        Some(ApiError::NotLeader {
            leader: Some(members[&first].addr.clone())
        })
    );

    let mut remote = RemoteConfig::default();
    remote.retry_for = CLUSTER_DEADLINE;
    let client = RemoteMasterProxy::with_config(&endpoints, remote).expect("a client");
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("echo", |t: TaskInput| async move { Ok(t.payload) })
        .expect("a handler");
    let connector = mawex_api::GrpcPodConnector::with_config(&endpoints, Default::default())
        .expect("a connector");
    let pod = Pod::start(
        PodConfig::new(PodId::new("p-1").expect("an id"), vec![group.clone()]).with_slots(2),
        Arc::new(InProcess::new(handlers)),
        Arc::new(connector),
    )
    .expect("the pod starts");

    let specs: Vec<TaskSpec> = (0..200)
        .map(|i| TaskSpec::new(group.clone(), "echo", format!("before {i}")))
        .collect();
    client.submit_many(specs.clone()).await.expect("accepted");
    client
        .await_result(specs[100].id)
        .await
        .expect("work runs before the kill");

    let killed = Instant::now();
    running.remove(&first).expect("the leader").kill().await;
    // The same client, unchanged, submits to whichever node leads now.
    let after: Vec<TaskSpec> = (0..100)
        .map(|i| TaskSpec::new(group.clone(), "echo", format!("after {i}")))
        .collect();
    client
        .submit_many(after.clone())
        .await
        .expect("accepted after the fail-over");
    println!(
        "the first submit after the kill was accepted {} ms after it",
        killed.elapsed().as_millis()
    );
    let (second, _) = leader(&nodes(&running)).await;
    assert_ne!(second, first);
    // Pods are welcomed in the term of the leader: a later one than the first leader's.
    let term_of = |node: &MasterNode| node.raft().metrics().borrow_watched().current_term;
    let probe = || PodHello::new(PodId::new("probe").expect("an id"), vec![probed.clone()]);
    let welcomed = running[&second]
        .node
        .pod_connector()
        .connect(probe())
        .await
        .expect("a session")
        .welcome
        .term;
    assert_eq!(welcomed, term_of(&running[&second].node));
    assert!(welcomed > first_term, "{welcomed} after {first_term}");
    // Leases held at the kill are claimed by the pod on the new leader within the recovery
    // grace: no attempt fails for the fail-over. An assignment the old leader committed but
    // never delivered runs again under a new attempt (the pod does not hold it), counted
    // as no failure.
    let mut redispatched = 0;
    for spec in specs.iter().chain(&after) {
        let result = client.await_result(spec.id).await.expect("a result");
        assert_eq!(result.outcome, Outcome::Succeeded(spec.payload.clone()));
        let view = client.get(spec.id).await.expect("a task");
        assert_eq!(view.failures, vec![], "task {}", spec.id);
        if result.attempt.0 > 1 {
            redispatched += 1;
        }
    }
    println!("assignments never delivered, run again without a failure: {redispatched}");
    let view = client.get(after[0].id).await.expect("a task");
    assert_eq!(view.state, TaskState::Succeeded);
    pod.shutdown().await.expect("the pod stops");
    for (_, node) in running {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_over_grpc_go_to_the_leader() {
    let dirs = temporary_dirs(4);
    let (mut running, members) = served_three(&dirs, settings).await;
    let (first, _) = leader(&nodes(&running)).await;
    let admin = |id: u64| {
        RemoteClusterAdmin::new(
            &format!("http://{}", members[&id].addr),
            &Default::default(),
        )
        .expect("a client")
    };
    let leading = admin(first);
    let follower = *running.keys().find(|id| **id != first).expect("a follower");

    // A follower names the leader; bad requests are refused, naming the node.
    assert_eq!(
        admin(follower).promote([4]).await.err(),
        Some(ApiError::NotLeader {
            leader: Some(members[&first].addr.clone())
        })
    );
    let refused = leading.remove(9).await.expect_err("not a member");
    assert!(
        matches!(&refused, ApiError::InvalidArgument(why) if why.contains("node 9 is not a member")),
        "{refused:?}"
    );
    let refused = leading.promote([4]).await.expect_err("not a learner");
    assert!(
        matches!(&refused, ApiError::InvalidArgument(why) if why.contains("node 4 is not a learner")),
        "{refused:?}"
    );

    // Node 4 joins, is promoted, and a follower leaves.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address").to_string();
    running.insert(4, serve_node(dirs[3].path(), settings(4), listener).await);
    let view = leading.add_learner(4, &address).await.expect("added");
    assert_eq!(view.learners.get(&4), Some(&address));
    let view = leading.promote([4]).await.expect("promoted");
    assert!(view.voters.contains_key(&4) && view.learners.is_empty());
    let view = leading.remove(follower).await.expect("removed");
    assert_eq!(view.voters.len(), 3);
    assert!(!view.voters.contains_key(&follower));
    assert_eq!(leading.members().await.expect("members"), view);

    // The lead is handed to node 4 on request; a node that is no voter cannot take it. A
    // result stream of the old leader's ends saying who leads now, so a client resumes there.
    let mut results = running[&first]
        .node
        .client()
        .results(GroupName::new("handed").expect("a valid name"), None)
        .await
        .expect("a result stream");
    let refused = leading
        .transfer_leader(follower)
        .await
        .expect_err("removed");
    assert!(
        matches!(&refused, ApiError::InvalidArgument(why) if why.contains(&format!("node {follower} is not a voter"))),
        "{refused:?}"
    );
    let view = leading.transfer_leader(4).await.expect("handed over");
    assert_eq!(view.leader, Some(4));
    let ended = tokio::time::timeout(CLUSTER_DEADLINE, futures::StreamExt::next(&mut results))
        .await
        .expect("the stream ends");
    assert!(
        matches!(ended, Some(Err(ApiError::NotLeader { .. }))),
        "{ended:?}"
    );
    let (now, _) = leader(&nodes(&running)).await;
    assert_eq!(now, 4);
    assert!(matches!(
        leading.transfer_leader(first).await,
        Err(ApiError::NotLeader { .. })
    ));
    for (_, node) in running {
        node.kill().await;
    }
}

/// The embedded default grows on its own data: a cluster of one with tasks, started again as
/// node 1 served over gRPC with its address, records the address, takes two learners and
/// promotes them; once node 1 is killed, the other two elect a leader that has every task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_one_grows_into_three_that_fail_over() {
    let dirs = temporary_dirs(3);
    let group = GroupName::new("grown").expect("a valid name");
    let single = mawex_raft::ReplicatedMaster::start_single(
        dirs[0].path(),
        mawex_core::Master::builder().config(settings(1).1),
    )
    .await
    .expect("a cluster of one starts");
    let mut ids = common::submit(&single.proxy(), &group, 50).await;
    single.shutdown().await.expect("a clean stop");

    let (listeners, members) = common::three_listeners().await;
    let mut running = std::collections::BTreeMap::new();
    for (id, listener) in listeners {
        let (mut config, master) = settings(id);
        config.address = Some(members[&id].addr.clone());
        let dir = dirs[usize::try_from(id - 1).expect("small")].path();
        running.insert(id, serve_node(dir, (config, master), listener).await);
    }
    // Nothing to initialise: node 1 has its cluster of one, and leads it again.
    let (first, proxy) = leader(&nodes(&running)).await;
    assert_eq!(first, 1);
    let one = &running[&1].node;
    let started = Instant::now();
    while one.members().voters.get(&1) != Some(&members[&1].addr) {
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "node 1's address was not recorded: {:?}",
            one.members()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in [2, 3] {
        one.add_learner(id, members[&id].addr.clone())
            .await
            .expect("a learner added");
    }
    one.promote([2, 3].into()).await.expect("promoted");
    ids.extend(common::submit(&proxy, &group, 50).await);

    running.remove(&1).expect("node 1").kill().await;
    let (next, proxy) = leader(&nodes(&running)).await;
    assert_ne!(next, 1, "another node leads");
    for id in &ids {
        let view = proxy.get(*id).await.expect("every task survives");
        assert_eq!(view.state, TaskState::Pending);
    }
    for (_, node) in running {
        node.kill().await;
    }
}

/// A fan-in of twenty nodes, the leader killed while they run: the fan-in runs on the new
/// leader with every one of their outputs, and each node has one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_in_gets_every_input_once_across_a_fail_over() {
    const LEAVES: usize = 20;
    let dirs = temporary_dirs(3);
    let group = GroupName::new("served").expect("a valid name");
    let (mut running, members) = served_three(&dirs, settings).await;
    let endpoints: Vec<String> = members
        .values()
        .map(|n| format!("http://{}", n.addr))
        .collect();
    let (first, _) = leader(&nodes(&running)).await;
    let mut remote = RemoteConfig::default();
    remote.retry_for = CLUSTER_DEADLINE;
    let client = RemoteMasterProxy::with_config(&endpoints, remote).expect("a client");
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("slow", |t: TaskInput| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(t.payload)
        })
        .expect("a handler")
        .register("join", |t: TaskInput| async move {
            let mut parts: Vec<String> = t
                .inputs
                .iter()
                .map(|r| match &r.outcome {
                    Outcome::Succeeded(out) => String::from_utf8_lossy(out).into_owned(),
                    other => format!("{other:?}"),
                })
                .collect();
            parts.sort();
            Ok(parts.join(",").into())
        })
        .expect("a handler");
    let connector = mawex_api::GrpcPodConnector::with_config(&endpoints, Default::default())
        .expect("a connector");
    let pod = Pod::start(
        PodConfig::new(PodId::new("p-1").expect("an id"), vec![group.clone()]).with_slots(2),
        Arc::new(InProcess::new(handlers)),
        Arc::new(connector),
    )
    .expect("the pod starts");
    let leaf = |i: usize| format!("leaf{i:02}");
    let mut nodes_of_graph: Vec<mawex_api::GraphNode> = (0..LEAVES)
        .map(|i| {
            mawex_api::GraphNode::new(
                leaf(i),
                TaskSpec::new(group.clone(), "slow", leaf(i)).with_output_limit(16),
            )
        })
        .collect();
    nodes_of_graph.push(mawex_api::GraphNode::new(
        "sum",
        TaskSpec::new(group.clone(), "join", ""),
    ));
    let edges = (0..LEAVES)
        .map(|i| mawex_api::GraphEdge::new(leaf(i), "sum"))
        .collect();
    let graph = mawex_api::GraphSpec::new(nodes_of_graph, edges);
    client.submit_graph(graph.clone()).await.expect("accepted");
    client
        .await_result(graph.id.node_id(&leaf(3)))
        .await
        .expect("some leaves run before the kill");
    running.remove(&first).expect("the leader").kill().await;
    let sum = client
        .await_result(graph.id.node_id("sum"))
        .await
        .expect("the fan-in's result");
    let expected: Vec<String> = (0..LEAVES).map(leaf).collect();
    assert_eq!(
        sum.outcome,
        Outcome::Succeeded(expected.join(",").into()),
        "every input, once each"
    );
    let view = client.graph(graph.id).await.expect("the graph");
    assert!(view.is_finished());
    assert_eq!(view.count(TaskState::Succeeded), LEAVES + 1);
    for node in &view.nodes {
        let task = client.get(node.task).await.expect("a task");
        assert_eq!(task.failures, vec![], "{} failed nowhere", node.name);
    }
    pod.shutdown().await.expect("the pod stops");
    for (_, node) in running {
        node.kill().await;
    }
}

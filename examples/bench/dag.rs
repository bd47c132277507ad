//! `--scenario dag`: a layered graph of no-op nodes (each after two nodes of the layer
//! before), submitted as one: its throughput against the same number of flat tasks in the
//! same process, and the latency each edge adds (a dependency ended → its dependant started,
//! from the handler's own clock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mawex::{
    Bytes, GraphEdge, GraphNode, GraphSpec, GroupName, HandlerRegistry, InProcess, Master,
    MasterConfig, MasterProxy, Pod, PodConfig, PodId, SledJournal, TaskId, TaskInput, TaskSpec,
};

/// When each task's handler ran.
#[derive(Default)]
struct Runs {
    spans: Mutex<HashMap<TaskId, (Instant, Instant)>>,
    done: AtomicUsize,
}

/// The scenario: `nodes` in layers of `width`, on a master journaled by `log` (`sled` or
/// `raft`), one pod of `slots` slots.
pub(crate) async fn dag(
    nodes: usize,
    width: usize,
    slots: u32,
    prefetch: Option<u32>,
    log: &str,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        width >= 2 && nodes >= 2 * width,
        "--nodes must be at least 2 × --width"
    );
    let dir = tempfile::tempdir()?;
    let builder = Master::builder().config(MasterConfig::default());
    let (plain, replicated) = if log == "raft" {
        let node =
            mawex_raft::ReplicatedMaster::start_single(dir.path().join("raft"), builder).await?;
        (None, Some(node))
    } else {
        let journal = SledJournal::open(dir.path().join("journal"))?;
        (Some(builder.start(journal).await?), None)
    };
    let master: &Master = match (&plain, &replicated) {
        (Some(master), _) => master,
        (_, Some(node)) => node.master(),
        _ => anyhow::bail!("no master"),
    };
    let proxy: Arc<dyn MasterProxy> = Arc::new(master.proxy());
    let runs = Arc::new(Runs::default());
    let mut handlers = HandlerRegistry::new();
    {
        let runs = runs.clone();
        handlers.register("noop", move |t: TaskInput| {
            let runs = runs.clone();
            async move {
                let start = Instant::now();
                let end = Instant::now();
                runs.spans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(t.task, (start, end));
                runs.done.fetch_add(1, Ordering::Relaxed);
                Ok(Bytes::new())
            }
        })?;
    }
    let flat_group = GroupName::new("bench")?;
    let dag_group = GroupName::new("dag")?;
    let mut pod_config = PodConfig::new(
        PodId::new("bench-pod")?,
        vec![flat_group.clone(), dag_group.clone()],
    )
    .with_slots(slots);
    if let Some(n) = prefetch {
        pod_config = pod_config.with_prefetch(n);
    }
    let pod = Pod::start(
        pod_config,
        Arc::new(InProcess::new(handlers)),
        Arc::new(master.pod_connector()),
    )?;

    // The same number of flat tasks first, in the same process.
    let flat_seconds = super::throughput(&proxy, &flat_group, nodes, 1000, false).await?;
    runs.done.store(0, Ordering::Relaxed);

    let layers = nodes / width;
    let name = |layer: usize, i: usize| format!("n{layer}.{i}");
    let mut graph_nodes = Vec::with_capacity(layers * width);
    let mut edges = Vec::with_capacity(layers * width * 2);
    for layer in 0..layers {
        for i in 0..width {
            let spec = TaskSpec::new(dag_group.clone(), "noop", Bytes::new()).with_output_limit(64);
            graph_nodes.push(GraphNode::new(name(layer, i), spec));
            if layer > 0 {
                for j in [i, (i + 1) % width] {
                    edges.push(GraphEdge::new(name(layer - 1, j), name(layer, i)));
                }
            }
        }
    }
    let total = graph_nodes.len();
    let graph = GraphSpec::new(graph_nodes, edges.clone());
    let id = graph.id;
    let started = Instant::now();
    proxy.submit_graph(graph).await?;
    let submit_ms = started.elapsed().as_secs_f64() * 1000.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while runs.done.load(Ordering::Relaxed) < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the graph did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dag_seconds = started.elapsed().as_secs_f64();

    let latencies = {
        let spans = runs.spans.lock().unwrap_or_else(|p| p.into_inner());
        let mut latencies: Vec<Duration> = Vec::with_capacity(total);
        for layer in 1..layers {
            for i in 0..width {
                let start = spans[&id.node_id(&name(layer, i))].0;
                let ready = [i, (i + 1) % width]
                    .iter()
                    .map(|&j| spans[&id.node_id(&name(layer - 1, j))].1)
                    .max()
                    .unwrap_or(start);
                latencies.push(start.saturating_duration_since(ready));
            }
        }
        latencies.sort_unstable();
        latencies
    };
    pod.shutdown().await?;
    match (plain, replicated) {
        (Some(master), _) => master.shutdown().await?,
        (_, Some(node)) => node.shutdown().await?,
        _ => {}
    }
    let tasks_per_s = total as f64 / dag_seconds;
    let flat_tasks_per_s = nodes as f64 / flat_seconds;
    Ok(serde_json::json!({
        "scenario": "dag",
        "log": log,
        "nodes": total,
        "width": width,
        "prefetch": prefetch.map_or_else(|| "default".to_owned(), |n| n.to_string()),
        "edges": edges.len(),
        "tasks_per_s": tasks_per_s.round(),
        "flat_tasks_per_s": flat_tasks_per_s.round(),
        "ratio": (tasks_per_s / flat_tasks_per_s * 1000.0).round() / 1000.0,
        "edge_p50_ms": (super::percentile(&latencies, 0.50) * 1000.0).round() / 1000.0,
        "edge_p99_ms": (super::percentile(&latencies, 0.99) * 1000.0).round() / 1000.0,
        "submit_ms": submit_ms.round(),
    }))
}

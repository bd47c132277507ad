//! Start an embedded master (the one node of its cluster: a durable Raft log), a pod serving
//! two groups, submit 100 tasks (typed ones, and raw ones as another language would send) and print what happened.
//!
//! `cargo run --example quickstart`

use std::collections::BTreeMap;
use std::sync::Arc;

use mawex::{
    GroupName, HandlerRegistry, InProcess, Master, MasterProxy, Outcome, Pod, PodConfig, PodId,
    ReplicatedMaster, Task, TaskInput, TaskSpec,
};
use serde::{Deserialize, Serialize};

/// A typed task: its payload is this struct (as JSON), its handler `square`, its output an
/// `i64`.
#[derive(Serialize, Deserialize)]
struct Square {
    n: i64,
}

impl Task for Square {
    const HANDLER: &'static str = "square";
    type Output = i64;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // The master is the one node of its cluster, the embedded default (it grows into three
    // masters on the same data). Its log lives in a temporary directory; point it anywhere
    // to keep it.
    let dir = tempfile::tempdir()?;
    let master =
        ReplicatedMaster::start_single(dir.path().join("master"), Master::builder()).await?;

    // One pod, two consumer groups, one slot: its tasks run one after another.
    let text = GroupName::new("text")?;
    let math = GroupName::new("math")?;
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("shout", |t: TaskInput| async move {
            Ok(String::from_utf8_lossy(&t.payload).to_uppercase().into())
        })?
        .register_task(|task: Square, _input| async move { Ok(task.n * task.n) })?;
    let pod = Pod::start(
        PodConfig::new(PodId::new("pod-1")?, vec![text.clone(), math.clone()]),
        Arc::new(InProcess::new(handlers)),
        Arc::new(master.pod_connector()),
    )?;

    // 100 tasks: 50 per group. Every tenth square is sent raw with a payload that is not a
    // `Square`: it fails at once, and its error names the task and the field.
    let proxy = master.proxy();
    let mut specs = Vec::new();
    for i in 0..50 {
        specs.push(TaskSpec::new(text.clone(), "shout", format!("hello {i}")));
        specs.push(if i % 10 == 9 {
            TaskSpec::new(math.clone(), "square", r#"{"n":"nine?"}"#)
        } else {
            TaskSpec::typed(math.clone(), &Square { n: i })?
        });
    }
    let started = std::time::Instant::now();
    let acks = proxy.submit_many(specs).await?;

    let mut summary: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let mut example = BTreeMap::new();
    for ack in &acks {
        let result = proxy.await_result(ack.id).await?;
        let kind = match &result.outcome {
            Outcome::Succeeded(out) => {
                example
                    .entry(result.group.to_string())
                    .or_insert_with(|| String::from_utf8_lossy(out).into_owned());
                "succeeded"
            }
            Outcome::Failed(error) => {
                example
                    .entry(format!("{} error", result.group))
                    .or_insert_with(|| error.message.clone());
                "failed"
            }
            _ => "other",
        };
        *summary.entry((result.group.to_string(), kind)).or_default() += 1;
    }

    println!("{} tasks finished in {:.1?}", acks.len(), started.elapsed());
    for ((group, kind), n) in &summary {
        println!("  {group:<5} {kind:<9} {n}");
    }
    for (what, out) in &example {
        println!("  first {what}: {out}");
    }
    let stats = master.master().stats().borrow().clone();
    println!(
        "master: {} succeeded, {} failed, {} pending, {} running; journal at event {}",
        stats.counts.succeeded,
        stats.counts.failed,
        stats.counts.pending,
        stats.counts.running,
        stats.last_seq
    );

    pod.shutdown().await?;
    master.shutdown().await?;
    anyhow::ensure!(
        stats.counts.succeeded == 95 && stats.counts.failed == 5,
        "unexpected outcome counts"
    );
    Ok(())
}

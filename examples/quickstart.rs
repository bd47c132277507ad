//! Start an embedded master with a durable journal, a pod serving two groups, submit 100
//! tasks and print what happened.
//!
//! `cargo run --example quickstart`

use std::collections::BTreeMap;
use std::sync::Arc;

use mawex::{
    GroupName, HandlerError, HandlerRegistry, InProcess, Master, MasterProxy, Outcome, Pod,
    PodConfig, PodId, SledJournal, TaskInput, TaskSpec,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // The journal lives in a temporary directory; point it anywhere to keep it.
    let dir = tempfile::tempdir()?;
    let master = Master::builder()
        .start(SledJournal::open(dir.path().join("journal"))?)
        .await?;

    // One pod, two consumer groups, one slot: its tasks run one after another.
    let text = GroupName::new("text")?;
    let math = GroupName::new("math")?;
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("shout", |t: TaskInput| async move {
            Ok(String::from_utf8_lossy(&t.payload).to_uppercase().into())
        })?
        .register("square", |t: TaskInput| async move {
            let n: i64 = std::str::from_utf8(&t.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| HandlerError::permanent("payload is not an integer"))?;
            Ok((n * n).to_string().into())
        })?;
    let pod = Pod::start(
        PodConfig::new(PodId::new("pod-1")?, vec![text.clone(), math.clone()]),
        Arc::new(InProcess::new(handlers)),
        Arc::new(master.pod_connector()),
    )?;

    // 100 tasks: 50 per group; every tenth square gets a payload it cannot parse.
    let proxy = master.proxy();
    let mut specs = Vec::new();
    for i in 0..50 {
        specs.push(TaskSpec::new(text.clone(), "shout", format!("hello {i}")));
        let payload = if i % 10 == 9 {
            "nine?".to_string()
        } else {
            i.to_string()
        };
        specs.push(TaskSpec::new(math.clone(), "square", payload));
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
            Outcome::Failed(_) => "failed",
            _ => "other",
        };
        *summary.entry((result.group.to_string(), kind)).or_default() += 1;
    }

    println!("{} tasks finished in {:.1?}", acks.len(), started.elapsed());
    for ((group, kind), n) in &summary {
        println!("  {group:<5} {kind:<9} {n}");
    }
    for (group, out) in &example {
        println!("  first {group} output: {out}");
    }
    let stats = master.stats().borrow().clone();
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

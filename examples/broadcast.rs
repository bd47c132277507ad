//! A broadcast to 30 pods: the dry-run plan, live progress, and where each pod pulled from.
//!
//! `cargo run --example broadcast -- --pods 30 --per-source 3`

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mawex::broadcast::{SOURCE_ADDR_ENV, SOURCE_POD_ENV, VERSION_ENV};
use mawex::{
    BroadcastSpec, Bytes, GroupName, HandlerRegistry, InProcess, Master, MasterProxy,
    MemoryJournal, Pod, PodConfig, PodId, Strategy, TaskInput,
};

#[derive(Parser, Debug)]
struct Args {
    /// Pods to reach.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Concurrent pulls one source serves.
    #[arg(long, default_value_t = 3)]
    per_source: u32,
    /// How long one pull takes, ms.
    #[arg(long, default_value_t = 300)]
    pull_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let master = Master::builder().start(MemoryJournal::new()).await?;
    let fleet = GroupName::new("fleet")?;
    let pull = Duration::from_millis(args.pull_ms);
    let mut handlers = HandlerRegistry::new();
    // A real deploy would `rsync -a $MAWEX_SOURCE_ADDR::app/ /srv/app/` here.
    handlers.register("deploy", move |t: TaskInput| async move {
        let env = |k: &str| t.env.get(k).cloned().unwrap_or_default();
        let (_pod, _addr, _version) = (env(SOURCE_POD_ENV), env(SOURCE_ADDR_ENV), env(VERSION_ENV));
        tokio::time::sleep(pull).await;
        Ok(Bytes::new())
    })?;
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let mut config = PodConfig::new(PodId::new(format!("web-{i:02}"))?, vec![fleet.clone()]);
        config.address = Some(format!("10.0.0.{}:873", i + 1));
        pods.push(Pod::start(
            config,
            Arc::new(InProcess::new(handlers.clone())),
            Arc::new(master.pod_connector()),
        )?);
    }
    let mut stats = master.stats();
    stats.wait_for(|s| s.pods.len() == args.pods).await?;

    let proxy = master.proxy();
    let spec = BroadcastSpec::new("site", fleet, "deploy")
        .with_strategy(Strategy::Pull {
            per_source: args.per_source,
        })
        .with_origin_address("origin.example:873");
    let plan = proxy.plan_broadcast(spec.clone()).await?;
    println!(
        "plan: version {} to {} pods in {} waves (dry run, nothing recorded)",
        plan.version,
        plan.targets.len(),
        plan.waves
    );
    for wave in 1..=plan.waves {
        let n = plan.targets.iter().filter(|t| t.wave == wave).count();
        println!("  wave {wave}: {n} pods");
    }

    let fired = proxy.fire_broadcast(spec).await?;
    println!("fired broadcast #{} (version {})", fired.id, fired.version);
    let view = loop {
        let view = proxy
            .wait_broadcast(fired.id, Duration::from_millis(250))
            .await?;
        let running = view
            .targets
            .iter()
            .filter(|t| t.state == mawex::TargetState::Running)
            .count();
        println!(
            "  {}/{} done, {running} pulling",
            view.done(),
            view.targets.len()
        );
        if view.is_finished() {
            break view;
        }
    };
    let took = view
        .finished_at
        .map(|f| f.saturating_since(view.fired_at))
        .unwrap_or_default();
    println!("finished in {took:?}:");
    for t in &view.targets {
        let source = t
            .source
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let duration = t.duration().unwrap_or_default();
        println!(
            "  {:<7} {:?} from {source:<8} in {duration:?}",
            t.pod, t.state
        );
    }
    for pod in pods {
        pod.shutdown().await?;
    }
    master.shutdown().await?;
    Ok(())
}

//! A pod with a couple of handlers, connected to a master over gRPC.
//!
//! `cargo run --example worker -- --master http://127.0.0.1:7070 --id pod-1 --groups text,math`
//! Ctrl-C leaves cleanly: queued work goes back, running work finishes.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mawex::{
    GroupName, GrpcPodConnector, HandlerError, HandlerRegistry, InProcess, Pod, PodConfig, PodId,
    TaskInput,
};

#[derive(Parser, Debug)]
struct Args {
    /// The master's endpoint, or the endpoints of a cluster's masters separated by commas.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    master: String,
    /// This pod's id; keep it stable across restarts.
    #[arg(long, default_value = "pod-1")]
    id: String,
    /// Comma-separated consumer groups.
    #[arg(long, default_value = "text,math", value_delimiter = ',')]
    groups: Vec<String>,
    /// Attempts run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Token sent with every call (a `pod` token), for a master that requires one.
    #[arg(long)]
    token: Option<String>,
    /// PEM authorities to trust the master's certificate by (then `--master https://…`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

/// The handlers this worker offers: `shout` (upper-cases text), `square` (an integer),
/// `sleep` (waits the payload's milliseconds).
fn handlers() -> anyhow::Result<HandlerRegistry> {
    let mut r = HandlerRegistry::new();
    r.register("shout", |t: TaskInput| async move {
        Ok(String::from_utf8_lossy(&t.payload).to_uppercase().into())
    })?
    .register("square", |t: TaskInput| async move {
        let n: i64 = std::str::from_utf8(&t.payload)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| HandlerError::permanent("payload is not an integer"))?;
        Ok(n.checked_mul(n)
            .ok_or_else(|| HandlerError::permanent("overflow"))?
            .to_string()
            .into())
    })?
    .register("sleep", |t: TaskInput| async move {
        let ms: u64 = std::str::from_utf8(&t.payload)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(t.payload)
    })?;
    Ok(r)
}

/// How to reach the master: with a token and a trusted authority, if given.
fn channel(
    token: Option<String>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<mawex::ChannelConfig> {
    let mut channel = mawex::ChannelConfig::default();
    if let Some(ca) = ca {
        channel = channel.with_tls(mawex::ClientTls::new(std::fs::read(ca)?));
    }
    if let Some(token) = token {
        channel = channel.with_token(token);
    }
    Ok(channel)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let groups = args
        .groups
        .iter()
        .map(GroupName::new)
        .collect::<Result<Vec<_>, _>>()?;
    let pod = Pod::start(
        PodConfig::new(PodId::new(&args.id)?, groups).with_slots(args.slots),
        Arc::new(InProcess::new(handlers()?)),
        Arc::new(GrpcPodConnector::with_config(
            args.master.split(','),
            channel(args.token.clone(), args.ca.as_deref())?,
        )?),
    )?;
    println!(
        "pod {} serving {:?} for {}",
        args.id, args.groups, args.master
    );
    tokio::signal::ctrl_c().await?;
    println!("leaving");
    pod.shutdown().await?;
    Ok(())
}

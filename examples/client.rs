//! Submits tasks to a master over gRPC and prints their results.
//!
//! `cargo run --example client -- --master http://127.0.0.1:7070 --tasks 10`

use clap::Parser;
use mawex::{GroupName, MasterProxy, Outcome, RemoteMasterProxy, TaskSpec};

#[derive(Parser, Debug)]
struct Args {
    /// The master's endpoint, or the endpoints of a cluster's masters separated by commas.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    master: String,
    /// How many `square` tasks to submit.
    #[arg(long, default_value_t = 10)]
    tasks: i64,
    /// Token sent with every call (a `client` token), for a master that requires one.
    #[arg(long)]
    token: Option<String>,
    /// PEM authorities to trust the master's certificate by (then `--master https://…`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = mawex::RemoteConfig::default();
    if let Some(ca) = &args.ca {
        config.channel = config
            .channel
            .with_tls(mawex::ClientTls::new(std::fs::read(ca)?));
    }
    if let Some(token) = args.token.clone() {
        config.channel = config.channel.with_token(token);
    }
    let proxy = RemoteMasterProxy::with_config(args.master.split(','), config)?;
    let math = GroupName::new("math")?;
    let specs: Vec<_> = (1..=args.tasks)
        .map(|n| TaskSpec::new(math.clone(), "square", n.to_string()))
        .collect();
    let acks = proxy.submit_many(specs).await?;
    println!(
        "submitted {} tasks; waiting for a worker of group {math}",
        acks.len()
    );
    for (n, ack) in (1..).zip(&acks) {
        let result = proxy.await_result(ack.id).await?;
        match result.outcome {
            Outcome::Succeeded(out) => {
                println!(
                    "{n}² = {} (attempt {})",
                    String::from_utf8_lossy(&out),
                    result.attempt.0
                )
            }
            Outcome::Failed(e) => println!("{n}: failed: {e}"),
            other => println!("{n}: {other:?}"),
        }
    }
    Ok(())
}

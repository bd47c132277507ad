//! A standalone master: durable journal, gRPC for clients and pods.
//!
//! `cargo run --example master -- --listen 127.0.0.1:7070 --journal ./mawex-journal`
//! Stop it with Ctrl-C (clean: snapshot and close).

use clap::Parser;
use mawex::{Master, MasterConfig, Server, SledJournal};

#[derive(Parser, Debug)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Journal directory (created if missing).
    #[arg(long, default_value = "./mawex-journal")]
    journal: std::path::PathBuf,
    /// Seconds a silent pod keeps its leases.
    #[arg(long, default_value_t = 10.0)]
    lease_timeout: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = MasterConfig::default();
    config.lease_timeout = std::time::Duration::from_secs_f64(args.lease_timeout);
    config.heartbeat_interval = config.lease_timeout / 5;
    let master = Master::builder()
        .config(config)
        .start(SledJournal::open(&args.journal)?)
        .await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "mawex master listening on http://{}",
        listener.local_addr()?
    );
    // Serves until Ctrl-C, or until the master stops on its own (a journal write failed):
    // then ends open streams so clients and pods move on at once.
    let stopped = master.stopped();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    Server::new(&master)
        .serve(listener, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => println!("shutting down"),
                reason = stopped => {
                    let _ = failed_tx.send(reason);
                }
            }
        })
        .await?;
    if let Ok(reason) = failed_rx.await {
        anyhow::bail!("the master stopped: {reason}");
    }
    master.shutdown().await?;
    Ok(())
}

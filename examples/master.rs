//! A standalone master: durable journal, gRPC for clients and pods.
//!
//! `cargo run --example master -- --listen 127.0.0.1:7070 --journal ./mawex-journal`
//! Stop it with Ctrl-C (clean: snapshot and close).
//!
//! On a network: `--tls-cert server.pem --tls-key server.key --tokens tokens.toml` (the
//! files are watched and reloaded when they change, and on SIGHUP); `--client-ca ca.pem`
//! requires client certificates too. Without TLS and tokens it serves only on loopback, unless `--insecure`.

use std::time::Duration;

use clap::Parser;
use mawex::auth::{TokenStore, Tokens};
use mawex::{Master, MasterConfig, Server, ServerTls, SledJournal};

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
    /// Token file (TOML, see `mawex::auth`): every call then needs a token.
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,
    /// PEM certificate chain to serve TLS with (with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM authorities whose client certificates are required (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<std::path::PathBuf>,
    /// Serve on a non-loopback address even without TLS and tokens.
    #[arg(long)]
    insecure: bool,
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
    let mut server = Server::new(&master);
    let mut watchers = Vec::new();
    let mut reload_tokens = None;
    if let Some(path) = &args.tokens {
        let tokens = TokenStore::new(Tokens::from_file(path)?);
        watchers.push(tokens.watch(path, Duration::from_secs(2)));
        reload_tokens = Some((tokens.clone(), path.clone()));
        server = server.tokens(tokens);
    }
    let mut reload_tls = None;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = ServerTls::from_files_with_clients(cert, key, args.client_ca.as_deref())?;
        server = server.tls(tls);
        let handle = server.tls_handle()?;
        watchers.push(handle.watch_files(
            cert,
            key,
            args.client_ca.clone(),
            Duration::from_secs(5),
        ));
        reload_tls = Some((handle, cert.clone(), key.clone(), args.client_ca.clone()));
    }
    // SIGHUP reloads both at once, for operators who rotate files and then signal.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    watchers.push(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some((tokens, path)) = &reload_tokens {
                match tokens.reload(path) {
                    Ok(n) => println!("SIGHUP: {n} tokens loaded"),
                    Err(e) => eprintln!("SIGHUP: tokens not reloaded: {e}"),
                }
            }
            if let Some((handle, cert, key, ca)) = &reload_tls {
                let loaded = ServerTls::from_files_with_clients(cert, key, ca.as_deref());
                match loaded.and_then(|tls| handle.reload(&tls)) {
                    Ok(()) => println!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => eprintln!("SIGHUP: TLS not reloaded: {e}"),
                }
            }
        }
    }));
    if args.insecure {
        server = server.insecure();
    }
    server
        .serve(listener, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => println!("shutting down"),
                reason = stopped => {
                    let _ = failed_tx.send(reason);
                }
            }
        })
        .await?;
    watchers.iter().for_each(tokio::task::JoinHandle::abort);
    if let Ok(reason) = failed_rx.await {
        anyhow::bail!("the master stopped: {reason}");
    }
    master.shutdown().await?;
    Ok(())
}

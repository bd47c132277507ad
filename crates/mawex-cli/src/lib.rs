//! The `mawex` binary: run masters and workers, and submit and inspect tasks, from a terminal
//! and one configuration file. `main.rs` only calls [`run`].

mod broadcasts;
pub mod cli;
mod cluster;
pub mod config;
mod discovery;
mod error;
mod graphs;
mod handlers;
mod logs;
pub mod output;
mod serve;
mod tasks;
mod top;
mod tree;
mod web;

use clap::{CommandFactory, Parser};

pub use error::{CliError, Exit};

use cli::{Cli, Command, ConfigAction, Output};
use config::{Config, Loaded, LogFormat, Overrides};
use output::Rows;

/// Parses the command line, runs the command, and says how the process ends. Errors are
/// reported on stderr here.
pub fn run() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; clap prints each where it belongs.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
        }
    };
    match execute(cli) {
        Ok(()) => Exit::Success,
        Err(e) => {
            eprintln!("mawex: {e}");
            e.exit()
        }
    }
}

/// The flags that set configuration keys, whatever the command.
fn overrides(cli: &Cli) -> Overrides {
    let mut flags = Overrides::default();
    flags.set("client.masters", cli.master.clone());
    flags.set("client.token", cli.token.clone());
    flags.set("log.format", cli.log_format.map(LogFormat::from));
    flags.set("log.level", cli.log_level.clone());
    match &cli.command {
        Command::Master(args) => args.overrides(&mut flags),
        Command::Worker(args) => args.overrides(&mut flags),
        Command::Standalone(args) => {
            args.master.overrides(&mut flags);
            args.worker.overrides(&mut flags);
        }
        Command::Web { listen } => flags.set("web.listen", listen.clone()),
        _ => {}
    }
    flags
}

/// Logs on stderr, as `log` says. A second call (in tests) changes nothing.
fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

fn execute(cli: Cli) -> Result<(), CliError> {
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "mawex", &mut std::io::stdout());
        return Ok(());
    }
    let loaded = config::load(cli.config.as_deref(), &overrides(&cli))?;
    if let Command::Config { action } = &cli.command {
        return config_command(&loaded, *action, cli.output);
    }
    init_logs(&loaded.config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("starting the runtime"))?;
    let mut config = loaded.config;
    let output = cli.output;
    runtime.block_on(async move {
        if cli.command.is_client() {
            config.client.masters = masters(&config).await?;
        }
        match cli.command {
            Command::Master(args) => serve::master(&config, &args).await,
            Command::Worker(_) => serve::worker(&config).await,
            Command::Standalone(_) => serve::standalone(&config).await,
            Command::Submit(args) => tasks::submit(&config, output, args).await,
            Command::Get(args) => tasks::get(&config, output, &args.id).await,
            Command::Logs { id, follow } => logs::logs(&config, output, &id, follow).await,
            Command::List(args) => tasks::list(&config, output, args).await,
            Command::Cancel(args) => tasks::cancel(&config, &args.id).await,
            Command::Retry(args) => tasks::retry(&config, &args.id).await,
            Command::Failed(args) => tasks::failed(&config, output, args).await,
            Command::Pods { action } => tasks::pods(&config, output, action).await,
            Command::Groups { action } => tasks::groups(&config, output, action).await,
            Command::Cron { action } => tasks::cron(&config, output, action).await,
            Command::Broadcast { action } => broadcasts::broadcast(&config, output, action).await,
            Command::Graph { action } => graphs::graph(&config, output, action).await,
            Command::Top => top::top(&config).await,
            Command::Web { .. } => web::web(&config).await,
            Command::Move { to, ids } => tasks::move_pending(&config, &to, &ids).await,
            Command::Prefer { priority, ids } => tasks::prefer(&config, priority, &ids).await,
            Command::Tree(args) => tree::tree(output, args).await,
            Command::Cluster { action } => cluster::cluster(&config, output, action).await,
            Command::Config { .. } | Command::Completions { .. } => Ok(()),
        }
    })
}

/// The masters a client or worker calls: `client.masters`; if it names none, those that
/// discovery finds when `discovery.key` is set, else the local default.
async fn masters(config: &Config) -> Result<Vec<String>, CliError> {
    if !config.client.masters.is_empty() {
        return Ok(config.client.masters.clone());
    }
    if config.discovery.key.is_none() {
        return Ok(vec![config::LOCAL_MASTER.to_owned()]);
    }
    let found = discovery::discover(&config.discovery).await?;
    tracing::info!(masters = ?found, "discovery found the masters");
    Ok(found)
}

impl Rows for config::Origin {
    fn headers() -> &'static [&'static str] {
        &["key", "value", "origin"]
    }

    fn cells(&self) -> Vec<String> {
        let value = match &self.value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        vec![self.key.clone(), value, self.origin.clone()]
    }
}

fn config_command(loaded: &Loaded, action: ConfigAction, output: Output) -> Result<(), CliError> {
    match action {
        ConfigAction::Check => {
            match &loaded.file {
                Some(file) => eprintln!("{}: the configuration is valid", file.display()),
                None => eprintln!("no configuration file; the defaults and environment are valid"),
            }
            Ok(())
        }
        ConfigAction::Show => output::print(output, &loaded.origins()),
    }
}

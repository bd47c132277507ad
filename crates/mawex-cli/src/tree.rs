//! `mawex tree`: runs a command down a k-ary tree of plain hosts over ssh (grifork's
//! standalone mode). Each host gets the command once its parent has it: typically an
//! `rsync` run on the parent that copies a directory to the host. The tree is a host
//! broadcast of an embedded master (in memory: a run that stops is run again, and rsync
//! copies only what is missing) with one local pod that runs the steps in an ssh sandbox.

use std::sync::Arc;
use std::time::Duration;

use mawex::sandbox::{SandboxSet, SshSandbox, SshStep};
use mawex::{
    BroadcastSpec, GroupName, Limits, Master, MasterProxy, MemoryJournal, Pod, PodConfig, PodId,
    RetryPolicy, Source, Strategy, TargetState, Timestamp,
};
use serde::Serialize;

use crate::broadcasts::{error_text, follow, progress, seconds};
use crate::cli::{Output, RunOn, TreeArgs};
use crate::output::{self, Rows};
use crate::CliError;

/// The handler the tree's steps run.
const STEP: &str = "tree";

/// `mawex tree`.
///
/// # Errors
/// A hosts file that cannot be read or names a bad host, bad flags, or a step that failed
/// (exit 3: the table says which hosts did not get the command).
pub(crate) async fn tree(output: Output, args: TreeArgs) -> Result<(), CliError> {
    let hosts = read_hosts(&args.hosts)?;
    if args.branches == 0 {
        return Err(CliError::Usage("--branches: at least 1".into()));
    }
    if !(1..=mawex::pod::MAX_POD_SLOTS).contains(&args.parallel) {
        return Err(CliError::Usage(format!(
            "--parallel: 1 to {}",
            mawex::pod::MAX_POD_SLOTS
        )));
    }
    let origin = match (&args.origin, args.on) {
        (Some(origin), _) => origin.clone(),
        (None, RunOn::Source) => "localhost".to_owned(),
        (None, RunOn::Target) => {
            return Err(CliError::Usage(
                "--origin: with --on target, the first wave's commands run on the hosts: \
                 name this machine as they reach it"
                    .into(),
            ))
        }
    };
    let command = args.command.join(" ");
    let group = GroupName::new("hosts").map_err(|e| CliError::Usage(e.to_string()))?;
    let mut spec = BroadcastSpec::new("tree", group.clone(), STEP)
        .with_hosts(hosts.clone())
        .with_strategy(Strategy::Tree {
            branches: args.branches,
        })
        .with_retry(match args.retries {
            0 => RetryPolicy::never(),
            retries => RetryPolicy::new(retries.saturating_add(1))
                .with_base_delay(Duration::from_millis(200)),
        });
    if let Some(timeout) = args.step_timeout {
        spec.limits = Limits::default().with_timeout(timeout);
    }
    spec.validate()?;

    let master = Master::builder()
        .start(MemoryJournal::new())
        .await
        .map_err(CliError::serve)?;
    let proxy = master.proxy();
    let ran = if args.dry_run {
        plan(&proxy, spec, &args, &origin, &command, output).await
    } else {
        run(&master, spec, &args, &origin, &command, group, output).await
    };
    master.shutdown().await.map_err(CliError::serve)?;
    ran
}

/// The hosts of `path`: one per line, blank lines and `#` comments skipped, each once.
fn read_hosts(path: &std::path::Path) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(CliError::io(format!(
        "reading the hosts file {}",
        path.display()
    )))?;
    let mut hosts: Vec<String> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let host = line.split('#').next().unwrap_or_default().trim();
        if host.is_empty() {
            continue;
        }
        if host.contains(char::is_whitespace) {
            return Err(CliError::Usage(format!(
                "{} line {}: one host per line, not {host:?}",
                path.display(),
                number + 1
            )));
        }
        if let Err(e) = mawex::PodId::new(host) {
            return Err(CliError::Usage(format!(
                "{} line {}: {host:?} is not a host name this takes ({e}); for \
                 `user@host`, give the user in an ssh config (`Host`, `User`)",
                path.display(),
                number + 1
            )));
        }
        if hosts.iter().any(|known| known == host) {
            return Err(CliError::Usage(format!(
                "{} line {}: {host} is listed twice",
                path.display(),
                number + 1
            )));
        }
        hosts.push(host.to_owned());
    }
    if hosts.is_empty() {
        return Err(CliError::Usage(format!("{}: no hosts", path.display())));
    }
    Ok(hosts)
}

/// `{source}` and `{target}` of `command` filled for one host.
fn filled(command: &str, source: &str, target: &str) -> String {
    command
        .replace("{source}", source)
        .replace("{target}", target)
}

/// Prints the tree, running nothing.
async fn plan(
    proxy: &impl MasterProxy,
    spec: BroadcastSpec,
    args: &TreeArgs,
    origin: &str,
    command: &str,
    output: Output,
) -> Result<(), CliError> {
    let plan = proxy.plan_broadcast(spec).await?;
    eprintln!(
        "{} hosts in {} waves, {} children per host; nothing is run (--dry-run)",
        plan.targets.len(),
        plan.waves,
        args.branches
    );
    let rows: Vec<PlanRow> = plan
        .targets
        .iter()
        .map(|t| {
            let host = t.pod.to_string();
            let parent = match &t.source {
                Source::Pod(pod) => pod.to_string(),
                _ => origin.to_owned(),
            };
            let runs_on = match args.on {
                RunOn::Source => parent.clone(),
                RunOn::Target => host.clone(),
            };
            PlanRow {
                command: filled(command, &parent, &host),
                host,
                wave: t.wave,
                parent,
                runs_on,
            }
        })
        .collect();
    output::print(output, &rows)
}

/// Runs the tree: an embedded pod with one slot per step run at once.
async fn run(
    master: &Master,
    spec: BroadcastSpec,
    args: &TreeArgs,
    origin: &str,
    command: &str,
    group: GroupName,
    output: Output,
) -> Result<(), CliError> {
    let mut options = Vec::new();
    if let Some(config) = &args.ssh_config {
        options.push("-F".to_owned());
        options.push(config.display().to_string());
    }
    for option in &args.ssh_options {
        options.push("-o".to_owned());
        options.push(option.clone());
    }
    let mut ssh = SshSandbox::new().with_options(options);
    ssh.origin_name = origin.to_owned();
    let step = match args.on {
        RunOn::Source => SshStep::on_source(command),
        RunOn::Target => SshStep::on_target(command),
    };
    ssh.step(STEP, step).map_err(CliError::serve)?;
    let pod_id = PodId::new("tree").map_err(CliError::serve)?;
    let pod = Pod::start(
        PodConfig::new(pod_id, vec![group]).with_slots(args.parallel),
        SandboxSet::new(Arc::new(ssh)),
        Arc::new(master.pod_connector()),
    )
    .map_err(CliError::serve)?;
    let proxy = master.proxy();
    let ran = async {
        let fired = proxy.fire_broadcast(spec).await?;
        eprintln!(
            "{} hosts, {} children per host",
            fired.targets.len(),
            args.branches
        );
        follow(&proxy, fired.id, |view| {
            let (done, all) = progress(view);
            eprintln!("{done}/{all} hosts finished");
        })
        .await
    }
    .await;
    pod.shutdown().await.map_err(CliError::serve)?;
    let view = ran?;
    let now = Timestamp::now();
    let rows: Vec<HostRow> = view
        .targets
        .iter()
        .map(|t| HostRow {
            host: t.pod.to_string(),
            parent: t.source.as_ref().map(|source| match source {
                Source::Pod(pod) => pod.to_string(),
                _ => origin.to_owned(),
            }),
            state: t.state.name(),
            attempts: t.attempts,
            seconds: seconds(t, now),
            error: error_text(t),
        })
        .collect();
    output::print(output, &rows)?;
    let failed = view
        .targets
        .iter()
        .filter(|t| t.state != TargetState::Done)
        .count();
    if failed > 0 {
        return Err(CliError::TaskFailed(format!(
            "{failed} of {} hosts did not get the command",
            view.targets.len()
        )));
    }
    Ok(())
}

/// A host of the tree as `--dry-run` prints it.
#[derive(Debug, Serialize)]
struct PlanRow {
    host: String,
    wave: u32,
    parent: String,
    runs_on: String,
    command: String,
}

impl Rows for PlanRow {
    fn headers() -> &'static [&'static str] {
        &["host", "wave", "parent", "runs on", "command"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.host.clone(),
            self.wave.to_string(),
            self.parent.clone(),
            self.runs_on.clone(),
            self.command.clone(),
        ]
    }
}

/// A host of the tree as a run prints it.
#[derive(Debug, Serialize)]
struct HostRow {
    host: String,
    /// Where it got the command from (the origin's name for the first wave).
    parent: Option<String>,
    state: &'static str,
    attempts: u32,
    /// Seconds from start to finish.
    seconds: Option<f64>,
    error: Option<String>,
}

impl Rows for HostRow {
    fn headers() -> &'static [&'static str] {
        &["host", "parent", "state", "attempts", "time", "error"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.host.clone(),
            self.parent.clone().unwrap_or_default(),
            self.state.to_owned(),
            self.attempts.to_string(),
            self.seconds.map(|s| format!("{s:.1}s")).unwrap_or_default(),
            self.error.clone().unwrap_or_default(),
        ]
    }
}

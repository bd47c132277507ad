//! The command line: every command, flag and argument.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{LogFormat, Overrides};

/// Distributed task scheduling: masters, workers and tasks from a terminal.
///
/// Configuration comes from a TOML file (`--config`, `MAWEX_CONFIG`, or `./mawex.toml`),
/// then `MAWEX_<SECTION>__<KEY>` environment variables, then flags (docs/configuration.md).
/// Exit codes: 0 success, 1 error, 2 usage, 3 task failed, 4 wait timed out, 5 cancelled.
#[derive(Debug, Parser)]
#[command(name = "mawex", version)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "MAWEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// How read commands print: a table for people, JSON, or one JSON object per line.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The master's endpoints, comma-separated (client.masters).
    #[arg(long, global = true, value_delimiter = ',')]
    pub master: Option<Vec<String>>,
    /// The bearer token sent with every call (client.token).
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Logs: `text` or `json` (log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Logs: a filter such as `info` or `mawex_core=debug` (log.level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How read commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a master (a cluster of one, or a node of a cluster with `master.cluster`).
    Master(MasterArgs),
    /// Runs a worker: a pod whose handlers are the commands of `worker.handlers`.
    Worker(WorkerArgs),
    /// Runs a master and one worker in one process, the data in `master.data_dir`.
    Standalone(StandaloneArgs),
    /// Submits a task (or, with `--batch`, one per JSON line on stdin).
    Submit(SubmitArgs),
    /// Shows a task.
    Get(GetArgs),
    /// A task's live output: the last lines its latest attempt printed (kept by the master,
    /// bounded); `--follow` prints new ones until the task finishes.
    Logs {
        /// The task's id.
        id: String,
        /// Keeps printing new lines, through retries, until the task finishes.
        #[arg(long, short)]
        follow: bool,
    },
    /// Lists tasks, a page at a time.
    List(ListArgs),
    /// Cancels a task.
    Cancel(GetArgs),
    /// Runs a failed task again.
    Retry(GetArgs),
    /// The failed queue: a summary, or retry or purge what a filter matches.
    Failed(FailedArgs),
    /// The pods connected to the master: groups, slots, leases, labels, CPU and memory.
    Pods {
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<PodAction>,
    },
    /// Consumer groups: their tasks by state and settings; pause, resume, limit them.
    Groups {
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<GroupAction>,
    },
    /// Cron schedules: a task submitted at every tick.
    Cron {
        /// What to do.
        #[command(subcommand)]
        action: CronAction,
    },
    /// Broadcasts: a task run on every pod of a group, pulled pod to pod in waves.
    Broadcast {
        /// What to do.
        #[command(subcommand)]
        action: BroadcastAction,
    },
    /// Workflows: a graph of tasks from a TOML file, submitted as one; its nodes' states.
    Graph {
        /// What to do.
        #[command(subcommand)]
        action: GraphAction,
    },
    /// A live view of the pods, groups and failed queue, refreshed every second; `q` quits.
    Top,
    /// Serves the REST API and `/metrics` over the masters of `client.masters`.
    Web {
        /// Where to serve (web.listen; default 127.0.0.1:7080).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Moves pending tasks to another group.
    Move {
        /// The group they go to.
        #[arg(long)]
        to: String,
        /// The tasks.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Puts pending tasks ahead of the others of their priority (or gives them a priority).
    Prefer {
        /// A new priority instead (higher runs first).
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// The tasks.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The masters of a cluster: who is in it; add, promote, remove a node; move the lead.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Runs a command down a tree of plain hosts over ssh: each host once its parent has
    /// it, typically an rsync from the parent (`{source}`) to the host (`{target}`).
    Tree(TreeArgs),
    /// Checks or shows the configuration.
    Config {
        /// `check` or `show`.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Prints a completion script for a shell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `mawex graph`.
#[derive(Debug, Clone, Subcommand)]
pub enum GraphAction {
    /// Submits the graph a TOML file describes: `[[node]]` tables with `name`, `group`,
    /// `handler`, and optionally `payload`, `after` (node names), `policy` (`all-succeeded`,
    /// `all-finished`), `pass_output`, `output_limit`, `priority`, `retry`; an `id` at the
    /// top makes submitting the file again harmless. Prints the graph's id.
    Submit {
        /// The file.
        file: std::path::PathBuf,
        /// Waits until every node finished and prints their states; exits 3 if one failed,
        /// 5 if one was cancelled.
        #[arg(long)]
        wait: bool,
        /// With `--wait`: gives up after this long (exit 4; the graph goes on).
        #[arg(long, requires = "wait", value_parser = duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Every node of a graph: its task, state, and the nodes it runs after.
    Status {
        /// The graph's id.
        id: String,
        /// Waits until every node finished (exit codes as `submit --wait`).
        #[arg(long)]
        wait: bool,
    },
    /// Cancels every node of a graph that has not finished.
    Cancel {
        /// The graph's id.
        id: String,
    },
}

/// `mawex pods`.
#[derive(Debug, Clone, Subcommand)]
pub enum PodAction {
    /// Every pod connected now.
    List,
    /// Gives a pod no new work until it restarts: its queued leases go back, what runs
    /// finishes; it shows `draining` (stop it once it is idle).
    Drain {
        /// The pod's id.
        pod: String,
    },
}

/// `mawex cluster`: asked of the node that leads (a follower's answer names it).
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterAction {
    /// The voters and learners, their addresses, and who leads.
    Members,
    /// Adds a node (started with `master.cluster`, not initialised) as a learner; answers
    /// once it has caught up.
    Add {
        /// Its id: new to the cluster (a node that lost its disk joins under a new one).
        id: u64,
        /// Where the others reach it (`host:port`).
        address: String,
    },
    /// Makes learners voters.
    Promote {
        /// Their ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Removes a voter or a learner (never the last voter).
    Remove {
        /// Its id.
        id: u64,
    },
    /// Hands the lead to a voter, e.g. before the leader is restarted: clients and pods
    /// move at once instead of after an election timeout.
    Transfer {
        /// The voter that is to lead.
        id: u64,
    },
}

/// `mawex groups`.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupAction {
    /// Every group with tasks or settings.
    List,
    /// Its tasks are accepted and wait; none starts (running ones finish).
    Pause {
        /// The group.
        group: String,
    },
    /// Starts its tasks again.
    Resume {
        /// The group.
        group: String,
    },
    /// At most this many starts a second (bursts of `--burst`); `off` lifts the limit.
    Rate {
        /// The group.
        group: String,
        /// Starts per second, or `off`.
        per_second: String,
        /// Starts saved up for a burst (default: one second's worth).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// At most this many of its tasks run at once, across all pods; `off` lifts it.
    Ceiling {
        /// The group.
        group: String,
        /// Tasks at once, or `off`.
        max: String,
    },
    /// Attempts in all for its tasks that name no policy of their own; `off`: the master's.
    Retry {
        /// The group.
        group: String,
        /// Attempts in all, or `off`.
        attempts: String,
    },
}

/// `mawex cron`.
#[derive(Debug, Clone, Subcommand)]
pub enum CronAction {
    /// Creates a schedule (again with the same settings: nothing changes).
    Add {
        /// Its name.
        name: String,
        /// A cron expression: 5 fields, or 6 with seconds first (`"*/5 * * * *"`).
        cron: String,
        /// The group of its tasks.
        group: String,
        /// Their handler.
        handler: String,
        /// Their payload. Default: empty.
        payload: Option<String>,
        /// The IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Ticks missed while the master was down run once (default: skipped).
        #[arg(long)]
        run_missed_once: bool,
        /// Priority of its tasks.
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
    },
    /// Every schedule.
    List,
    /// Stops a schedule firing.
    Pause {
        /// Its name.
        name: String,
    },
    /// Lets it fire again.
    Resume {
        /// Its name.
        name: String,
    },
    /// Deletes it.
    Delete {
        /// Its name.
        name: String,
    },
}

/// `mawex broadcast`.
#[derive(Debug, Clone, Subcommand)]
pub enum BroadcastAction {
    /// Fires a broadcast (a new version of the app) and prints its id.
    Fire {
        /// What to broadcast.
        #[command(flatten)]
        spec: BroadcastArgs,
        /// Waits until every target finished, with progress on stderr; exit 3 if one did not.
        #[arg(long)]
        wait: bool,
    },
    /// Shows the targets and waves a broadcast would have, and runs nothing.
    Plan {
        /// What would be broadcast.
        #[command(flatten)]
        spec: BroadcastArgs,
    },
    /// A broadcast's targets: version, source, state, time.
    Status {
        /// Which broadcast.
        #[command(flatten)]
        which: WhichBroadcast,
    },
    /// The same as `status`, redrawn every second until the broadcast finishes.
    Monitor {
        /// Which broadcast.
        #[command(flatten)]
        which: WhichBroadcast,
    },
    /// The apps' locks: one broadcast per app at a time.
    Locks,
    /// Clears an app's lock by aborting the broadcast that holds it.
    Unlock {
        /// The app.
        app: String,
    },
}

/// A broadcast: by id, or the latest of an app.
#[derive(Debug, Clone, Args)]
pub struct WhichBroadcast {
    /// Its id.
    #[arg(required_unless_present = "app")]
    pub id: Option<u64>,
    /// The latest broadcast of this app.
    #[arg(long, conflicts_with = "id")]
    pub app: Option<String>,
}

/// What a broadcast runs, and where.
#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    /// The app (one broadcast per app at a time).
    pub app: String,
    /// The group whose pods are the targets.
    #[arg(long)]
    pub group: String,
    /// The handler each target runs.
    #[arg(long)]
    pub handler: String,
    /// Its payload.
    #[arg(long)]
    pub payload: Option<String>,
    /// The version (default: one more than the last).
    #[arg(long)]
    pub version: Option<String>,
    /// A fixed tree of this many branches per node (default: pull, 5 per source).
    #[arg(long, conflicts_with = "per_source")]
    pub tree: Option<u32>,
    /// Pull: a source serves at most this many targets at once.
    #[arg(long)]
    pub per_source: Option<u32>,
    /// Only pods with this label, `key=value` (repeat the flag).
    #[arg(long = "label", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// Only pods whose id matches this pattern (`*` for any run of characters).
    #[arg(long)]
    pub pods: Option<String>,
    /// Where the first wave pulls from (the origin's address).
    #[arg(long)]
    pub origin: Option<String>,
}

/// `mawex config`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ConfigAction {
    /// Loads the configuration and reports the first problem, naming the key.
    Check,
    /// Prints every value in effect and where it came from.
    Show,
}

/// Flags of `mawex master` (and the master of `standalone`).
#[derive(Debug, Args, Default)]
pub struct MasterArgs {
    /// Where to serve gRPC (master.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Where to keep the data (master.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Makes the cluster of `master.cluster.peers`: on one node, the first time only.
    #[arg(long)]
    pub initialize: bool,
}

impl MasterArgs {
    /// The configuration keys these flags set.
    pub fn overrides(&self, flags: &mut Overrides) {
        flags.set("master.listen", self.listen.clone());
        flags.set("master.data_dir", self.data_dir.clone());
    }
}

/// Flags of `mawex worker` (and the pod of `standalone`).
#[derive(Debug, Args, Default)]
pub struct WorkerArgs {
    /// The pod's id (worker.id).
    #[arg(long)]
    pub id: Option<String>,
    /// The groups it serves, comma-separated (worker.groups).
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Attempts run at once (worker.slots).
    #[arg(long)]
    pub slots: Option<u32>,
    /// A label, `key=value` (worker.labels; repeat the flag).
    #[arg(long = "label", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// Where other pods reach this one (worker.advertise).
    #[arg(long)]
    pub advertise: Option<String>,
}

impl WorkerArgs {
    /// The configuration keys these flags set.
    pub fn overrides(&self, flags: &mut Overrides) {
        flags.set("worker.id", self.id.clone());
        flags.set("worker.groups", self.groups.clone());
        flags.set("worker.slots", self.slots);
        flags.set("worker.advertise", self.advertise.clone());
        for (key, value) in &self.labels {
            let path = vec!["worker".into(), "labels".into(), key.clone()];
            flags.set_path(path, Some(value.clone()));
        }
    }
}

/// Flags of `mawex standalone`.
#[derive(Debug, Args, Default)]
pub struct StandaloneArgs {
    /// The master's flags.
    #[command(flatten)]
    pub master: MasterArgs,
    /// The worker's flags.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

/// `mawex submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The consumer group (not with `--batch`).
    #[arg(required_unless_present = "batch")]
    pub group: Option<String>,
    /// The handler (not with `--batch`).
    #[arg(required_unless_present = "batch")]
    pub handler: Option<String>,
    /// The payload; `-` reads it from stdin. Default: empty.
    pub payload: Option<String>,
    /// Reads tasks from stdin, one JSON object per line:
    /// `{"group": …, "handler": …, "payload": …}` plus any of `id`, `priority`,
    /// `delay`, `dedup`, `retry`, `fairness_key`.
    #[arg(long, conflicts_with_all = ["group", "handler", "payload", "wait"])]
    pub batch: bool,
    /// Waits for the result, prints the output, and exits with the task's status.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: gives up after this long (exit 4; the task goes on).
    #[arg(long, requires = "wait", value_parser = duration)]
    pub timeout: Option<std::time::Duration>,
    /// Higher runs first (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Not before this long from now (`30s`, `5m`).
    #[arg(long, value_parser = duration, conflicts_with = "at")]
    pub delay: Option<std::time::Duration>,
    /// Not before this time, in UTC (RFC 3339: `2026-12-24T18:00:00Z`).
    #[arg(long)]
    pub at: Option<String>,
    /// A deduplication key: a second submit with it within `--dedup-window` returns the first.
    #[arg(long)]
    pub dedup: Option<String>,
    /// How long `--dedup` holds (default 1h).
    #[arg(long, requires = "dedup", value_parser = duration)]
    pub dedup_window: Option<std::time::Duration>,
    /// Attempts in all, retries included (default: the group's).
    #[arg(long)]
    pub retry: Option<u32>,
    /// Tasks of one fairness key take turns with other keys of the group.
    #[arg(long)]
    pub fairness_key: Option<String>,
    /// Runs after these tasks (ids, comma-separated or repeated): blocked until they ended
    /// as `--policy` asks, then run with their outputs as inputs.
    #[arg(long, value_delimiter = ',')]
    pub after: Vec<String>,
    /// With `--after`: `all-succeeded` (default: a failed one cancels this task) or
    /// `all-finished`.
    #[arg(long, requires = "after")]
    pub policy: Option<String>,
    /// The most output bytes this task may produce (more fails it for good); lets tasks
    /// that run after it take its output as an input within the payload limit.
    #[arg(long)]
    pub output_limit: Option<u64>,
}

/// A human duration: `500ms`, `30s`, `5m`, `1h 30m`.
pub fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// A task id.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The task's id.
    pub id: String,
}

/// `mawex list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only tasks in this state: blocked, pending, running, succeeded, failed, cancelled.
    #[arg(long)]
    pub state: Option<String>,
    /// Only tasks run by this handler.
    #[arg(long)]
    pub handler: Option<String>,
    /// Only tasks with this dedup key.
    #[arg(long)]
    pub dedup_key: Option<String>,
    /// Only tasks with this fairness key.
    #[arg(long)]
    pub fairness_key: Option<String>,
    /// Only tasks whose last error's message contains this text (case-sensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Only tasks whose last error is of this kind (handler, timed-out, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only tasks whose payload contains this text.
    #[arg(long)]
    pub payload: Option<String>,
    /// Newest first (and `--after` resumes below the id it names).
    #[arg(long)]
    pub newest: bool,
    /// Tasks per page (at most 1,000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Starts after this task id (the `next` a page printed).
    #[arg(long)]
    pub after: Option<String>,
    /// Every page, not just the first.
    #[arg(long)]
    pub all: bool,
}

/// `mawex failed`.
#[derive(Debug, Args)]
pub struct FailedArgs {
    /// `summary` (default), `retry` or `purge`.
    #[arg(value_enum, default_value_t = FailedAction::Summary)]
    pub action: FailedAction,
    /// Only tasks of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only tasks whose last error is of this kind: handler, panicked, unknown-handler,
    /// timed-out, cancelled, crashed, non-zero-exit, out-of-memory, sandbox, lease-expired.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only these tasks (repeat the flag).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Counts what would be acted on, and does nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Acts without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// What `mawex failed` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailedAction {
    /// Failed tasks counted by group and error kind.
    Summary,
    /// Runs them again.
    Retry,
    /// Forgets them.
    Purge,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of every command and flag (names unique, requirements that exist).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}

/// Where a tree's command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunOn {
    /// On the parent (`{source}`; on this machine for the first wave), pushing to the host.
    Source,
    /// On the host itself (`{target}`), pulling from its parent.
    Target,
}

/// Flags of `mawex tree`.
#[derive(Debug, Args)]
pub struct TreeArgs {
    /// The hosts (ssh names): one per line; blank lines and `#` comments are skipped.
    #[arg(long)]
    pub hosts: PathBuf,
    /// Children per host: a host that has the command passes it on to this many.
    #[arg(long, default_value_t = 2)]
    pub branches: u32,
    /// Prints the tree (each host's wave, parent and command) and runs nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the command runs.
    #[arg(long, value_enum, default_value = "source")]
    pub on: RunOn,
    /// `{source}` for the hosts of the first wave, whose parent is this machine: with
    /// `--on source` their command runs here (`sh -c`; default `localhost`); with `--on
    /// target` it runs on the host, so name this machine as the hosts reach it (required).
    #[arg(long)]
    pub origin: Option<String>,
    /// An ssh client configuration file (`ssh -F FILE`).
    #[arg(long)]
    pub ssh_config: Option<PathBuf>,
    /// An ssh option (`ssh -o OPTION`), e.g. `ConnectTimeout=5`; repeatable.
    #[arg(long = "ssh-option")]
    pub ssh_options: Vec<String>,
    /// Commands run at once, at most.
    #[arg(long, default_value_t = 16)]
    pub parallel: u32,
    /// Each command's time limit (e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub step_timeout: Option<std::time::Duration>,
    /// Retries of a host whose command failed (from another parent where there is one).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// The command, after `--`: its words joined with spaces (as ssh does), `{source}`
    /// and `{target}` replaced by the parent and the host.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl Command {
    /// Whether the command calls a master (a client's or a worker's): those find it by
    /// discovery when `client.masters` names none.
    pub fn is_client(&self) -> bool {
        !matches!(
            self,
            Command::Master(_)
                | Command::Standalone(_)
                | Command::Tree(_)
                | Command::Config { .. }
                | Command::Completions { .. }
        )
    }
}

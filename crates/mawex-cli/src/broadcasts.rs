//! `mawex broadcast`: fire a broadcast (a task run on every pod of a group, pulled pod to pod),
//! plan one without running it, follow it, and manage the apps' locks.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use mawex::{
    BroadcastId, BroadcastQuery, BroadcastSpec, BroadcastView, Bytes, MasterProxy,
    RemoteMasterProxy, Source, Strategy, TargetFilter, TargetState, TargetView, Timestamp,
};
use serde::Serialize;

use crate::cli::{BroadcastAction, BroadcastArgs, Output, WhichBroadcast};
use crate::config::Config;
use crate::output::{self, Rows};
use crate::tasks::{connect, group};
use crate::CliError;

/// How often `--wait` and `monitor` look again.
const REFRESH: Duration = Duration::from_secs(1);

/// `mawex broadcast`.
///
/// # Errors
/// Bad flags, a refused broadcast, or a failed call (an `admin` token is needed where
/// tokens are checked).
pub(crate) async fn broadcast(
    config: &Config,
    output: Output,
    action: BroadcastAction,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    match action {
        BroadcastAction::Fire { spec, wait } => {
            let view = proxy.fire_broadcast(spec_of(&spec)?).await?;
            eprintln!(
                "broadcast {} of {} version {} fired to {} targets",
                view.id,
                view.app,
                view.version,
                view.targets.len()
            );
            if !wait {
                return output::line(view.id);
            }
            let view = follow(&proxy, view.id, |view| {
                let (done, all) = progress(view);
                eprintln!("{done}/{all} targets finished");
            })
            .await?;
            output::print(output, &target_rows(&view))?;
            let failed = view
                .targets
                .iter()
                .filter(|t| t.state != TargetState::Done)
                .count();
            if failed > 0 {
                return Err(CliError::TaskFailed(format!(
                    "{failed} of {} targets did not finish",
                    view.targets.len()
                )));
            }
            Ok(())
        }
        BroadcastAction::Plan { spec } => {
            let plan = proxy.plan_broadcast(spec_of(&spec)?).await?;
            eprintln!(
                "{} version {}: {} targets in {} waves; {} have it already",
                plan.app,
                plan.version,
                plan.targets.len(),
                plan.waves,
                plan.already_applied.len()
            );
            let rows: Vec<PlanRow> = plan
                .targets
                .iter()
                .map(|t| PlanRow {
                    pod: t.pod.to_string(),
                    wave: t.wave,
                    source: t.source.to_string(),
                })
                .collect();
            output::print(output, &rows)
        }
        BroadcastAction::Status { which } => {
            let view = find(&proxy, &which).await?;
            eprintln!("{}", summary(&view));
            output::print(output, &target_rows(&view))
        }
        BroadcastAction::Monitor { which } => {
            let id = find(&proxy, &which).await?.id;
            let live = std::io::stdout().is_terminal() && output == Output::Table;
            let view = follow(&proxy, id, |view| {
                if live {
                    let mut stdout = std::io::stdout().lock();
                    // Clear and redraw: the table replaces the last one.
                    let _ = write!(stdout, "\x1b[2J\x1b[H{}\n\n", summary(view));
                    let _ = stdout.flush();
                    drop(stdout);
                    let _ = output::print(output, &target_rows(view));
                }
            })
            .await?;
            if live {
                print!("\x1b[2J\x1b[H");
                println!("{}\n", summary(&view));
            }
            output::print(output, &target_rows(&view))
        }
        BroadcastAction::Locks => {
            let rows: Vec<LockRow> = proxy
                .broadcast_locks()
                .await?
                .into_iter()
                .map(|l| LockRow {
                    app: l.app,
                    broadcast: l.broadcast,
                    version: l.version,
                    since: output::time(l.since),
                    expires_at: output::time(l.expires_at),
                })
                .collect();
            output::print(output, &rows)
        }
        BroadcastAction::Unlock { app } => {
            match proxy.clear_broadcast_lock(&app).await? {
                Some(id) => eprintln!("{app} unlocked: broadcast {id} aborted"),
                None => eprintln!("{app} held no lock"),
            }
            Ok(())
        }
    }
}

/// The broadcast the flags describe.
fn spec_of(args: &BroadcastArgs) -> Result<BroadcastSpec, CliError> {
    let mut spec = BroadcastSpec::new(args.app.clone(), group(&args.group)?, args.handler.clone())
        .with_payload(Bytes::from(args.payload.clone().unwrap_or_default()));
    if let Some(version) = &args.version {
        spec = spec.with_version(version.clone());
    }
    if let Some(branches) = args.tree {
        spec = spec.with_strategy(Strategy::Tree { branches });
    } else if let Some(per_source) = args.per_source {
        spec = spec.with_strategy(Strategy::Pull { per_source });
    }
    if let Some(origin) = &args.origin {
        spec = spec.with_origin_address(origin.clone());
    }
    if !args.labels.is_empty() || args.pods.is_some() {
        let mut filter = TargetFilter::default();
        filter.labels = args.labels.iter().cloned().collect();
        filter.name_pattern = args.pods.clone();
        spec = spec.with_filter(filter);
    }
    spec.validate()?;
    Ok(spec)
}

/// The broadcast `which` names: by id, or the latest of an app.
async fn find(
    proxy: &RemoteMasterProxy,
    which: &WhichBroadcast,
) -> Result<BroadcastView, CliError> {
    if let Some(id) = which.id {
        return Ok(proxy.broadcast(id).await?);
    }
    let Some(app) = &which.app else {
        return Err(CliError::Usage(
            "name a broadcast: its id, or --app APP".into(),
        ));
    };
    let mut query = BroadcastQuery::default().app(app.clone());
    query.limit = mawex::MAX_LIST_LIMIT;
    let mut latest = None;
    loop {
        let page = proxy.list_broadcasts(query.clone()).await?;
        if let Some(last) = page.broadcasts.into_iter().max_by_key(|b| b.id) {
            if latest
                .as_ref()
                .is_none_or(|l: &BroadcastView| l.id < last.id)
            {
                latest = Some(last);
            }
        }
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    latest.ok_or_else(|| CliError::Api(mawex::ApiError::NotFound(format!("a broadcast of {app}"))))
}

/// Waits for broadcast `id` to finish, calling `each` with every view seen.
pub(crate) async fn follow(
    proxy: &impl MasterProxy,
    id: BroadcastId,
    mut each: impl FnMut(&BroadcastView),
) -> Result<BroadcastView, CliError> {
    loop {
        let view = proxy.wait_broadcast(id, REFRESH).await?;
        each(&view);
        if view.finished_at.is_some() {
            return Ok(view);
        }
    }
}

/// (finished targets, all targets).
pub(crate) fn progress(view: &BroadcastView) -> (usize, usize) {
    let done = view
        .targets
        .iter()
        .filter(|t| t.state.is_terminal())
        .count();
    (done, view.targets.len())
}

/// One line about a broadcast.
fn summary(view: &BroadcastView) -> String {
    let (done, all) = progress(view);
    let state = match (view.finished_at, view.aborted) {
        (Some(_), true) => "aborted",
        (Some(_), false) => "finished",
        (None, _) => "running",
    };
    format!(
        "broadcast {} of {} version {} ({}): {done}/{all} targets finished, {state}",
        view.id, view.app, view.version, view.group
    )
}

/// A target as `status` and `monitor` print it.
#[derive(Debug, Serialize)]
pub(crate) struct TargetRow {
    pod: String,
    version: Option<String>,
    source: Option<String>,
    state: &'static str,
    attempts: u32,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// Seconds from start to finish (or to now).
    seconds: Option<f64>,
    error: Option<String>,
}

pub(crate) fn target_rows(view: &BroadcastView) -> Vec<TargetRow> {
    let now = Timestamp::now();
    view.targets
        .iter()
        .map(|t| TargetRow {
            pod: t.pod.to_string(),
            version: t.version.clone(),
            source: t.source.as_ref().map(|s| match s {
                Source::Origin => "origin".to_owned(),
                other => other.to_string(),
            }),
            state: t.state.name(),
            attempts: t.attempts,
            started_at: t.started_at.map(output::time),
            finished_at: t.finished_at.map(output::time),
            seconds: seconds(t, now),
            error: error_text(t),
        })
        .collect()
}

/// Seconds from a target's start to its finish (or to `now`).
pub(crate) fn seconds(target: &TargetView, now: Timestamp) -> Option<f64> {
    target.started_at.map(|s| {
        target
            .finished_at
            .unwrap_or(now)
            .saturating_since(s)
            .as_secs_f64()
    })
}

/// A target's last error on one line: its kind and message.
pub(crate) fn error_text(target: &TargetView) -> Option<String> {
    target.error.as_ref().map(|e| {
        let message = e.message.trim().replace('\n', " / ");
        format!("{}: {message}", e.kind.name())
    })
}

impl Rows for TargetRow {
    fn headers() -> &'static [&'static str] {
        &[
            "pod", "version", "source", "state", "attempts", "time", "error",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.pod.clone(),
            self.version.clone().unwrap_or_default(),
            self.source.clone().unwrap_or_default(),
            self.state.to_owned(),
            self.attempts.to_string(),
            self.seconds.map(|s| format!("{s:.1}s")).unwrap_or_default(),
            self.error.clone().unwrap_or_default(),
        ]
    }
}

/// A planned target.
#[derive(Debug, Serialize)]
struct PlanRow {
    pod: String,
    wave: u32,
    source: String,
}

impl Rows for PlanRow {
    fn headers() -> &'static [&'static str] {
        &["pod", "wave", "source"]
    }

    fn cells(&self) -> Vec<String> {
        vec![self.pod.clone(), self.wave.to_string(), self.source.clone()]
    }
}

/// An app's lock.
#[derive(Debug, Serialize)]
struct LockRow {
    app: String,
    broadcast: BroadcastId,
    version: String,
    since: String,
    expires_at: String,
}

impl Rows for LockRow {
    fn headers() -> &'static [&'static str] {
        &["app", "broadcast", "version", "since", "expires"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.app.clone(),
            self.broadcast.to_string(),
            self.version.clone(),
            self.since.clone(),
            self.expires_at.clone(),
        ]
    }
}

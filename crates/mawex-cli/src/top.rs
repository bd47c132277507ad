//! `mawex top`: a live terminal view of the pods, the groups and the failed queue, refreshed
//! every second; `q` quits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mawex::{FailedCount, GroupView, MasterProxy, PodView, RemoteMasterProxy, Timestamp};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};

use crate::config::Config;
use crate::tasks::connect;
use crate::CliError;

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// How long one wait for a key lasts, so that `q` is seen at once.
const KEY_POLL: Duration = Duration::from_millis(50);

/// What one refresh shows.
#[derive(Default)]
struct Snapshot {
    pods: Vec<PodView>,
    groups: Vec<GroupView>,
    failed: Vec<FailedCount>,
    /// Tasks finished per second, by group, since the last refresh.
    rates: BTreeMap<String, f64>,
    /// Why the last refresh failed, if it did (the view stays up and tries again).
    error: Option<String>,
    at: Option<Timestamp>,
}

/// `mawex top`.
///
/// # Errors
/// The terminal cannot be set up, or a bad configuration.
pub(crate) async fn top(config: &Config) -> Result<(), CliError> {
    let proxy = connect(config)?;
    let endpoints = config.client.masters.join(",");
    let mut terminal = ratatui::try_init().map_err(CliError::io("opening the terminal"))?;
    let shown = show(&proxy, &endpoints, &mut terminal).await;
    ratatui::restore();
    shown
}

async fn show(
    proxy: &RemoteMasterProxy,
    endpoints: &str,
    terminal: &mut DefaultTerminal,
) -> Result<(), CliError> {
    let mut snapshot = Snapshot::default();
    let mut finished_before: Option<(Instant, BTreeMap<String, u64>)> = None;
    terminal
        .draw(|frame| draw(frame, endpoints, &snapshot))
        .map_err(CliError::io("drawing"))?;
    loop {
        // A master that does not answer within a refresh is shown as such: the view (and
        // `q`) never waits behind a call that retries.
        let refreshed =
            tokio::time::timeout(REFRESH, refresh(proxy, &mut snapshot, &mut finished_before))
                .await;
        if refreshed.is_err() {
            snapshot.error = Some(format!("no answer within {REFRESH:?}"));
        }
        terminal
            .draw(|frame| draw(frame, endpoints, &snapshot))
            .map_err(CliError::io("drawing"))?;
        let next = Instant::now() + REFRESH;
        while Instant::now() < next {
            if quit_pressed()? {
                return Ok(());
            }
        }
    }
}

/// Whether `q`, Esc or Ctrl-C was pressed (waits up to [`KEY_POLL`]).
fn quit_pressed() -> Result<bool, CliError> {
    let ready = tokio::task::block_in_place(|| event::poll(KEY_POLL))
        .map_err(CliError::io("reading the keyboard"))?;
    if !ready {
        return Ok(false);
    }
    let pressed = event::read().map_err(CliError::io("reading the keyboard"))?;
    Ok(match pressed {
        Event::Key(key) if key.kind == KeyEventKind::Press => {
            matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    })
}

/// Reads the pods, groups and failed queue; rates from the change in finished tasks.
async fn refresh(
    proxy: &RemoteMasterProxy,
    snapshot: &mut Snapshot,
    finished_before: &mut Option<(Instant, BTreeMap<String, u64>)>,
) {
    let read = async {
        Ok::<_, mawex::ApiError>((
            proxy.list_pods().await?,
            proxy.list_groups().await?,
            proxy.failed_summary().await?,
        ))
    };
    match read.await {
        Ok((pods, groups, failed)) => {
            let now = Instant::now();
            let finished: BTreeMap<String, u64> = groups
                .iter()
                .map(|g| {
                    let done = g
                        .succeeded
                        .saturating_add(g.failed)
                        .saturating_add(g.cancelled);
                    (g.group.to_string(), done)
                })
                .collect();
            snapshot.rates = match finished_before.as_ref() {
                Some((then, before)) => {
                    let seconds = now.duration_since(*then).as_secs_f64().max(0.001);
                    finished
                        .iter()
                        .map(|(group, done)| {
                            let was = before.get(group).copied().unwrap_or(*done);
                            // Results expire too: a negative change is not a rate.
                            let rate = done.saturating_sub(was) as f64 / seconds;
                            (group.clone(), rate)
                        })
                        .collect()
                }
                None => BTreeMap::new(),
            };
            *finished_before = Some((now, finished));
            snapshot.pods = pods;
            snapshot.groups = groups;
            snapshot.failed = failed;
            snapshot.error = None;
            snapshot.at = Some(Timestamp::now());
        }
        Err(e) => snapshot.error = Some(e.to_string()),
    }
}

fn draw(frame: &mut Frame, endpoints: &str, snapshot: &Snapshot) {
    let [header, pods, groups, failed] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(8),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);

    let running: u64 = snapshot.groups.iter().map(|g| g.running).sum();
    let pending: u64 = snapshot.groups.iter().map(|g| g.pending).sum();
    let blocked: u64 = snapshot.groups.iter().map(|g| g.blocked).sum();
    let status = match (&snapshot.error, snapshot.at) {
        (Some(error), _) => format!("unreachable: {error}"),
        (None, Some(at)) => crate::output::time(at),
        (None, None) => "connecting…".into(),
    };
    frame.render_widget(
        Paragraph::new(vec![
            format!("mawex top — {endpoints} — {status}").into(),
            format!(
                "{} pods, {blocked} blocked, {pending} pending, {running} running — q quits",
                snapshot.pods.len()
            )
            .into(),
        ]),
        header,
    );

    let now = Timestamp::now();
    let pod_rows = snapshot.pods.iter().map(|p| {
        Row::new(vec![
            format!("{}{}", p.id, if p.draining { " (draining)" } else { "" }),
            p.groups
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            format!("{}/{}", p.running, p.slots),
            p.held.to_string(),
            format!("{:.0}%", f64::from(p.cpu_permille) / 10.0),
            format!("{:.1} MiB", p.memory_bytes as f64 / f64::from(1u32 << 20)),
            format!(
                "{:.1}s",
                now.saturating_since(p.last_heartbeat).as_secs_f64()
            ),
        ])
    });
    frame.render_widget(
        Table::new(
            pod_rows,
            [
                Constraint::Fill(2),
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(11),
                Constraint::Length(8),
            ],
        )
        .header(
            Row::new(["POD", "GROUPS", "RUNNING", "HELD", "CPU", "MEMORY", "HEARD"]).style(bold),
        )
        .block(Block::bordered().title(" Pods ")),
        pods,
    );

    let group_rows = snapshot.groups.iter().map(|g| {
        let rate = snapshot
            .rates
            .get(g.group.as_str())
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/s"));
        let limit = g
            .settings
            .rate
            .map_or_else(|| "-".to_owned(), |r| format!("{}/s", r.per_second));
        Row::new(vec![
            format!(
                "{}{}",
                g.group,
                if g.settings.paused { " (paused)" } else { "" }
            ),
            g.pending.to_string(),
            g.running.to_string(),
            g.succeeded.to_string(),
            g.failed.to_string(),
            rate,
            limit,
            g.mean_run_time
                .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis())),
        ])
    });
    frame.render_widget(
        Table::new(
            group_rows,
            [
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(10),
            ],
        )
        .header(
            Row::new([
                "GROUP",
                "PENDING",
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                "FINISHED",
                "LIMIT",
                "MEAN RUN",
            ])
            .style(bold),
        )
        .block(Block::bordered().title(" Groups ")),
        groups,
    );

    let failed_rows = snapshot.failed.iter().map(|f| {
        Row::new(vec![
            f.group.to_string(),
            f.kind.name().to_owned(),
            f.count.to_string(),
        ])
    });
    frame.render_widget(
        Table::new(
            failed_rows,
            [
                Constraint::Fill(2),
                Constraint::Fill(2),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(["GROUP", "LAST ERROR", "FAILED"]).style(bold))
        .block(Block::bordered().title(" Failed queue ")),
        failed,
    );
}

//! The dashboard's pages: rendered on the server (maud), each page's content a fragment that
//! stays live. The page's own small script (`live.js`, no third-party code) follows
//! `/events`, where the server sends the fragment again when it changed, at most once a
//! second; without EventSource it polls the fragment.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::Stream;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::api::TaskSearch;
use crate::json::{task_id, Task};
use crate::task_pages;
use crate::{AppState, WebError};

/// How often a live fragment is looked at again (and so the most it is sent).
const REFRESH: Duration = Duration::from_secs(1);
/// How often a live search that examines tasks one by one (by error text, say) is run again.
const SCANNING_REFRESH: Duration = Duration::from_secs(10);
/// How long one event stream lasts: the browser opens the next through the access checks
/// again, so a session that ended or a token that was withdrawn stops getting updates.
const STREAM_LASTS: Duration = Duration::from_secs(300);
/// The most event streams open at once; past them, pages poll.
const MAX_STREAMS: usize = 1_000;

/// An open event stream, counted while it lives.
struct StreamSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/groups", get(groups_page))
        .route("/tasks", get(tasks_page))
        .route("/tasks/{id}", get(task_page))
        .route("/graphs/{id}", get(graph_page))
        .route("/pods", get(pods_page))
        .route("/failed", get(failed_page))
        .route("/failed/messages", get(failed_messages_page))
        .route("/schedules", get(schedules_page))
        .route("/broadcasts", get(broadcasts_page))
        .route("/fragments/{*rest}", get(fragment_endpoint))
        .route("/events", get(events))
        .route("/static/live.js", get(script))
        .route("/static/style.css", get(style))
}

async fn script() -> Response {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/live.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/style.css"),
    )
        .into_response()
}

/// A page's head: its title, and the dashboard's style sheet.
pub(crate) fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · mawex" }
            link rel="stylesheet" href="/static/style.css";
        }
    }
}

/// A whole page: the header, and `content` kept live from `fragment`.
fn layout(title: &str, here: &str, fragment: &str, content: Markup) -> Html<String> {
    layout_with(title, here, fragment, html! {}, content)
}

/// A whole page with `controls` (forms) above its live `content`.
fn layout_with(
    title: &str,
    here: &str,
    fragment: &str,
    controls: Markup,
    content: Markup,
) -> Html<String> {
    let nav = [
        ("/", "Overview"),
        ("/groups", "Groups"),
        ("/tasks", "Tasks"),
        ("/failed", "Failed"),
        ("/pods", "Pods"),
        ("/schedules", "Schedules"),
        ("/broadcasts", "Broadcasts"),
    ];
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header {
                        a.brand href="/" { "mawex" }
                        @for (href, name) in nav {
                            a class=[(href == here).then_some("here")] href=(href) { (name) }
                        }
                        form method="post" action="/logout" { button type="submit" { "Log out" } }
                    }
                    main {
                        h1 { (title) }
                        (controls)
                        // Outside the live fragment: an update of the fragment keeps it.
                        p data-result {}
                        div id="live" data-live=(fragment) { (content) }
                    }
                    script src="/static/live.js" {}
                }
            }
        }
        .into_string(),
    )
}

/// The fragment at `path` (`/fragments/…`) with `query`.
async fn fragment(app: &AppState, path: &str, query: Option<&str>) -> Result<Markup, WebError> {
    match path {
        "/fragments/overview" => overview(app).await,
        "/fragments/groups" => groups(app).await,
        "/fragments/pods" => pods(app).await,
        "/fragments/failed" => failed(app).await,
        "/fragments/failed-messages" => {
            let line: FailedLine = serde_urlencoded::from_str(query.unwrap_or_default())
                .map_err(|e| WebError::BadRequest(format!("the line: {e}")))?;
            failed_messages(app, &line).await
        }
        "/fragments/schedules" => schedules(app).await,
        "/fragments/broadcasts" => broadcasts(app).await,
        "/fragments/tasks" => {
            let search: TaskSearch = serde_urlencoded::from_str(query.unwrap_or_default())
                .map_err(|e| WebError::BadRequest(format!("the search: {e}")))?;
            task_pages::results(app, &search).await
        }
        other => match (
            other.strip_prefix("/fragments/task/"),
            other.strip_prefix("/fragments/graph/"),
        ) {
            (Some(id), _) => task(app, id).await,
            (_, Some(id)) => crate::workflows::graph_fragment(app, id).await,
            _ => Err(mawex_api::ApiError::NotFound(format!("fragment {other}")).into()),
        },
    }
}

async fn fragment_endpoint(
    State(app): State<AppState>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, WebError> {
    let markup = fragment(&app, &format!("/fragments/{rest}"), query.as_deref()).await?;
    Ok(Html(markup.into_string()))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    fragment: String,
}

/// Server-Sent Events: the fragment named, each time it changed (looked at once a second).
async fn events(
    State(app): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let (path, fragment_query) = match query.fragment.split_once('?') {
        Some((path, q)) => (path.to_owned(), Some(q.to_owned())),
        None => (query.fragment.clone(), None),
    };
    if !path.starts_with("/fragments/") {
        return Err(WebError::BadRequest(format!(
            "fragment: {:?} is not a fragment of this dashboard",
            query.fragment
        )));
    }
    // The first render refuses a bad fragment before the stream starts.
    fragment(&app, &path, fragment_query.as_deref()).await?;
    // A search that examines tasks one by one is looked at again less often.
    let refresh = match (path.as_str(), fragment_query.as_deref()) {
        ("/fragments/failed-messages", _) => SCANNING_REFRESH,
        ("/fragments/tasks", Some(q)) => match serde_urlencoded::from_str::<TaskSearch>(q) {
            Ok(search) if search.scans() => SCANNING_REFRESH,
            _ => REFRESH,
        },
        _ => REFRESH,
    };
    let open = app
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let slot = StreamSlot(app.streams.clone());
    if open >= MAX_STREAMS {
        return Err(mawex_api::ApiError::ResourceExhausted(format!(
            "{MAX_STREAMS} event streams are open: this page polls instead"
        ))
        .into());
    }
    let ends = tokio::time::Instant::now() + STREAM_LASTS;
    let stream = futures::stream::unfold(
        (app, path, fragment_query, String::new(), true, slot),
        move |(app, path, query, last, first, slot)| async move {
            if !first {
                tokio::time::sleep(refresh).await;
            }
            loop {
                if tokio::time::Instant::now() >= ends {
                    return None;
                }
                let html = match fragment(&app, &path, query.as_deref()).await {
                    Ok(markup) => markup.into_string(),
                    Err(e) => html! { p.bad { "The master does not answer: " (e) } }.into_string(),
                };
                if html != last {
                    let event = Event::default().event("fragment").data(html.clone());
                    return Some((
                        Ok::<_, Infallible>(event),
                        (app, path, query, html, false, slot),
                    ));
                }
                tokio::time::sleep(refresh).await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn card(n: u64, what: &str) -> Markup {
    html! { div.card { div.n data-count=(what) { (n) } div.what { (what) } } }
}

async fn overview(app: &AppState) -> Result<Markup, WebError> {
    let groups = app.proxy.list_groups().await?;
    let pods = app.proxy.list_pods().await?;
    let day = app.proxy.history(mawex_api::HISTORY_MINUTES).await?;
    let sum = |f: fn(&mawex_api::GroupView) -> u64| groups.iter().map(f).sum::<u64>();
    let status = match &app.status {
        Some(status) => tokio::time::timeout(Duration::from_secs(1), status())
            .await
            .unwrap_or_else(|_| {
                vec![("masters".to_owned(), "did not answer within 1 s".to_owned())]
            }),
        None => Vec::new(),
    };
    Ok(html! {
        @if !status.is_empty() {
            dl.status {
                @for (label, value) in &status { div { dt { (label) } dd data-status=(label) { (value) } } }
            }
        }
        div.cards {
            (card(sum(|g| g.pending), "pending"))
            (card(sum(|g| g.running), "running"))
            (card(sum(|g| g.succeeded), "succeeded"))
            (card(sum(|g| g.failed), "failed"))
            (card(pods.len() as u64, "pods"))
        }
        (history_charts(&day))
        (groups_table(&groups, false))
    })
}

/// The last hour a second at a time (each minute's mean) and its queue depth, and the last
/// day a quarter of an hour at a time.
fn history_charts(day: &[mawex_api::MinuteCounts]) -> Markup {
    use crate::charts::{chart, Line};
    let hour = &day[day.len().saturating_sub(60)..];
    let per_second = |f: fn(&mawex_api::MinuteCounts) -> u64| -> Vec<f64> {
        hour.iter().map(|m| f(m) as f64 / 60.0).collect()
    };
    let quarters = |f: fn(&mawex_api::MinuteCounts) -> u64| -> Vec<f64> {
        day.chunks(15)
            .map(|q| q.iter().map(f).sum::<u64>() as f64)
            .collect()
    };
    html! {
        div.charts {
            (chart("Tasks a second, last hour", "each minute's mean", &[
                Line { name: "accepted", points: per_second(|m| m.accepted) },
                Line { name: "succeeded", points: per_second(|m| m.succeeded) },
                Line { name: "failed", points: per_second(|m| m.failed) },
            ], "an hour ago", "now"))
            (chart("Queue depth, last hour", "tasks waiting", &[
                Line { name: "pending", points: hour.iter().map(|m| m.pending as f64).collect() },
            ], "an hour ago", "now"))
            (chart("Tasks, last 24 hours", "a quarter of an hour", &[
                Line { name: "accepted", points: quarters(|m| m.accepted) },
                Line { name: "succeeded", points: quarters(|m| m.succeeded) },
                Line { name: "failed", points: quarters(|m| m.failed) },
            ], "a day ago", "now"))
        }
    }
}

/// The groups, each with its counts, times and settings; `editable`: with the forms that
/// change the settings.
fn groups_table(groups: &[mawex_api::GroupView], editable: bool) -> Markup {
    let seconds = |d: Option<std::time::Duration>| match d {
        Some(d) if d < std::time::Duration::from_secs(1) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => "–".to_owned(),
    };
    html! {
        table.groups {
            thead { tr {
                th { "group" } th.num { "pending" } th.num { "running" } th.num { "succeeded" }
                th.num { "failed" } th.num { "cancelled" }
                th.num { "wait p50 / p95" } th.num { "run p50 / p95" }
                th { "settings" } th { "" }
            } }
            tbody {
                @for g in groups {
                    tr data-group=(g.group) {
                        td { a href={ "/tasks?group=" (g.group) } { (g.group) } }
                        td.num { (g.pending) } td.num { (g.running) } td.num { (g.succeeded) }
                        td.num.bad[g.failed > 0] { (g.failed) } td.num { (g.cancelled) }
                        td.num { (seconds(g.times.wait_p50)) " / " (seconds(g.times.wait_p95)) }
                        td.num { (seconds(g.times.run_p50)) " / " (seconds(g.times.run_p95)) }
                        td {
                            @if editable { (settings_form(g)) } @else {
                                @if g.settings.paused { "paused " }
                                @if let Some(max) = g.settings.max_concurrency { "≤" (max) " at once " }
                                @if let Some(rate) = &g.settings.rate { (rate.per_second) "/s" }
                            }
                        }
                        td { (pause_or_resume(g)) }
                    }
                }
                @if groups.is_empty() { tr { td colspan="10" .muted { "No tasks yet." } } }
            }
        }
    }
}

/// A group's ceiling and rate, editable (a PATCH of those two: a blank one is off); its
/// other settings stay as they are when it is sent.
fn settings_form(g: &mawex_api::GroupView) -> Markup {
    let settings = crate::json::GroupSettingsBody::from(&g.settings);
    html! {
        form.settings data-json={ "/api/v1/groups/" (g.group) } data-edit="" data-method="PATCH" {
            label { "at once ≤ " input type="number" min="1" name="max_concurrency" placeholder="any" data-blank-null="" value=[settings.max_concurrency]; }
            label { " starts/s ≤ " input type="number" min="1" name="rate_per_second" placeholder="any" data-blank-null="" value=[settings.rate_per_second]; }
            " "
            button type="submit" name="Save" { "Save" }
        }
    }
}

/// Pauses or resumes a group; its other settings stay as they are then (a PATCH).
fn pause_or_resume(g: &mawex_api::GroupView) -> Markup {
    let (label, confirm, body) = if g.settings.paused {
        (
            "Resume",
            format!("Resume {}?", g.group),
            r#"{"paused": false}"#,
        )
    } else {
        (
            "Pause",
            format!("Pause {}? Its tasks wait; running ones finish.", g.group),
            r#"{"paused": true}"#,
        )
    };
    html! {
        form data-json={ "/api/v1/groups/" (g.group) } data-direct="" data-method="PATCH" data-body=(body) data-confirm=(confirm) {
            button type="submit" name=(label) { (label) }
        }
    }
}

async fn groups(app: &AppState) -> Result<Markup, WebError> {
    let groups = app.proxy.list_groups().await?;
    Ok(groups_table(&groups, true))
}

async fn pods(app: &AppState) -> Result<Markup, WebError> {
    let pods = app.proxy.list_pods().await?;
    crate::pod_usage::PodUsage::start(&app.pod_usage, &app.proxy);
    let usage = |pod: &mawex_api::PodView| {
        let samples = app.pod_usage.of(pod.id.as_str(), 60);
        let cpu: Vec<f64> = samples
            .iter()
            .map(|s| f64::from(s.cpu_permille) / 10.0)
            .collect();
        let memory: Vec<f64> = samples.iter().map(|s| s.memory_bytes as f64).collect();
        let peak_cpu = cpu.iter().copied().fold(0.0_f64, f64::max);
        let peak_memory = memory.iter().copied().fold(0.0_f64, f64::max) / 1_048_576.0;
        html! {
            (crate::charts::sparkline(&cpu, "cpu", &format!("CPU, last hour: peak {peak_cpu:.1} %")))
            (crate::charts::sparkline(&memory, "memory", &format!("memory, last hour: peak {peak_memory:.0} MiB")))
        }
    };
    Ok(html! {
        table {
            thead { tr {
                th { "pod" } th { "groups" } th.num { "running / slots" } th.num { "held" }
                th.num { "CPU" } th.num { "memory" } th { "CPU · memory, last hour" } th { "last heard" } th { "" }
            } }
            tbody {
                @for p in &pods {
                    tr {
                        td { (p.id) } td { (p.groups.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                        td.num { (p.running) " / " (p.slots) } td.num { (p.held) }
                        td.num { (format!("{:.1} %", f64::from(p.cpu_permille) / 10.0)) }
                        td.num { (format!("{:.0} MiB", p.memory_bytes as f64 / 1_048_576.0)) }
                        td.usage { (usage(p)) }
                        td { (crate::json::time(p.last_heartbeat)) }
                        td {
                            @if p.draining { "draining" } @else {
                                form data-json={ "/api/v1/pods/" (p.id) "/drain" } data-direct="" data-confirm={ "Drain " (p.id) "? It takes no new work until it restarts." } {
                                    button type="submit" name="Drain" { "Drain" }
                                }
                            }
                        }
                    }
                }
                @if pods.is_empty() { tr { td colspan="9" .muted { "No pod is connected." } } }
            }
        }
    })
}

async fn task(app: &AppState, id: &str) -> Result<Markup, WebError> {
    let view = app.proxy.get(task_id(id)?).await?;
    let t = Task::from(&view);
    let extras = crate::workflows::task_extras(app, &view).await?;
    let body = |b: &crate::json::Body| match b {
        crate::json::Body::Text(text) => text.clone(),
        crate::json::Body::Binary { base64 } => format!("base64: {base64}"),
    };
    Ok(html! {
        table {
            tr { th { "state" } td class={ "state-" (t.state) } { (t.state) } }
            tr { th { "group" } td { (t.group) } }
            tr { th { "handler" } td { (t.handler) } }
            tr { th { "attempt" } td { (t.attempt) } }
            tr { th { "pod" } td { (t.pod.clone().unwrap_or_default()) } }
            tr { th { "submitted" } td { (t.submitted_at) } }
            tr { th { "started" } td { (t.started_at.clone().unwrap_or_default()) } }
            tr { th { "finished" } td { (t.finished_at.clone().unwrap_or_default()) } }
            @if let Some(eta) = t.eta_ms { tr { th { "starts in" } td { (format!("{:.1} s", eta as f64 / 1000.0)) } } }
        }
        h2 { "Timeline" }
        (timeline(&view))
        h2 { "Payload" } pre { (body(&t.payload)) }
        @if let Some(output) = &t.output { h2 { "Output" } pre { (body(output)) } }
        @if let Some(e) = &t.error { h2 { "Error" } pre.bad { (e.kind) ": " (e.message) } }
        @if !t.failures.is_empty() {
            h2 { "Attempts that failed" }
            table { @for f in &t.failures { tr { td.num { (f.attempt) } td { (f.at) } td.bad { (f.error.kind) ": " (f.error.message) } } } }
        }
        (extras)
    })
}

/// What happened to a task, in order, each step with its time since it was accepted: its
/// failed attempts, the start of its current one, and its end.
fn timeline(view: &mawex_api::TaskView) -> Markup {
    let mut steps: Vec<(mawex_api::Timestamp, String, &'static str)> =
        vec![(view.submitted_at, "accepted".to_owned(), "")];
    if let Some(at) = view.not_before.filter(|at| *at > view.submitted_at) {
        let text = if view.state == mawex_api::TaskState::Pending {
            "ready then (its delay or retry backoff ends)"
        } else {
            "ready (its delay or retry backoff over)"
        };
        steps.push((at, text.to_owned(), "muted"));
    }
    for failure in &view.failures {
        let text = format!(
            "attempt {} failed: {}: {}",
            failure.attempt.0,
            failure.error.kind.name(),
            failure.error.message
        );
        steps.push((failure.at, text, "bad"));
    }
    // A pending task's start is an earlier attempt's, already told by its failure.
    let ran = view.state == mawex_api::TaskState::Running || view.state.is_terminal();
    if let Some(started) = view.started_at.filter(|_| ran) {
        let on = view
            .pod
            .as_ref()
            .map(|p| format!(" on {p}"))
            .unwrap_or_default();
        steps.push((
            started,
            format!("attempt {} started{on}", view.attempt.0),
            "",
        ));
    }
    if let Some(result) = &view.result {
        steps.push((result.finished_at, view.state.name().to_owned(), "done"));
    }
    steps.sort_by_key(|(at, _, _)| *at);
    let since = |at: mawex_api::Timestamp| {
        let d = at.saturating_since(view.submitted_at);
        format!("+{:.3} s", d.as_secs_f64())
    };
    html! {
        ol.timeline {
            @for (at, text, class) in &steps {
                li class=(class) { span.when title=(crate::json::time(*at)) { (since(*at)) } " " (text) }
            }
            @if !view.state.is_terminal() { li.muted { "… " (view.state.name()) } }
        }
    }
}

async fn overview_page(State(app): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(layout(
        "Overview",
        "/",
        "/fragments/overview",
        overview(&app).await?,
    ))
}

async fn groups_page(State(app): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(layout(
        "Groups",
        "/groups",
        "/fragments/groups",
        groups(&app).await?,
    ))
}

async fn pods_page(State(app): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(layout(
        "Pods",
        "/pods",
        "/fragments/pods",
        pods(&app).await?,
    ))
}

async fn tasks_page(
    State(app): State<AppState>,
    search: Result<Query<TaskSearch>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, WebError> {
    let Query(search) = search.map_err(|e| WebError::BadRequest(e.body_text()))?;
    // A search by id that finds its task opens it.
    if let Some(id) = crate::json::filled(&search.id) {
        let id = task_id(id)?;
        if app.proxy.get(id).await.is_ok() {
            return Ok(Redirect::to(&format!("/tasks/{id}")).into_response());
        }
    }
    // The live fragment shows the same page of the same search.
    let fragment = match serde_urlencoded::to_string(&search).unwrap_or_default() {
        q if q.is_empty() => "/fragments/tasks".to_owned(),
        q => format!("/fragments/tasks?{q}"),
    };
    let content = task_pages::results(&app, &search).await?;
    let controls = task_pages::controls(&search);
    Ok(layout_with("Tasks", "/tasks", &fragment, controls, content).into_response())
}

async fn graph_page(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, WebError> {
    let content = crate::workflows::graph_fragment(&app, &id).await?;
    Ok(layout(
        &format!("Graph {id}"),
        "/tasks",
        &format!("/fragments/graph/{id}"),
        content,
    ))
}

async fn task_page(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, WebError> {
    let content = task(&app, &id).await?;
    Ok(layout(
        &format!("Task {id}"),
        "/tasks",
        &format!("/fragments/task/{id}"),
        content,
    ))
}

/// A bulk action on the failed queue: a form the page's script sends as JSON, asking for the
/// count first (a dry run) and acting once it is confirmed.
fn bulk(action: &str, label: &str, group: &str, kind: &str, count: u64) -> Markup {
    html! {
        form data-json=(action) data-confirm={ (label) " " (count) " failed task" @if count != 1 { "s" } " of " (group) " (" (kind) ")?" } {
            input type="hidden" name="group" value=(group);
            input type="hidden" name="kind" value=(kind);
            button type="submit" name=(label) { (label) }
        }
    }
}

async fn failed(app: &AppState) -> Result<Markup, WebError> {
    let counts = app.proxy.failed_summary().await?;
    Ok(html! {
        p.muted { "Every action acts on all the tasks of its line, not a page: the count is asked first." }
        table {
            thead { tr { th { "group" } th { "error kind" } th.num { "failed" } th { "" } th { "" } th { "" } } }
            tbody {
                @for c in &counts {
                    tr data-failed={ (c.group) "/" (c.kind.name()) } {
                        td { a href={ "/tasks?group=" (c.group) "&state=failed" } { (c.group) } }
                        td { (c.kind.name()) }
                        td.num.bad { (c.count) }
                        td { (bulk("/api/v1/failed/retry", "Retry", c.group.as_str(), c.kind.name(), c.count)) }
                        td { (bulk("/api/v1/failed/purge", "Purge", c.group.as_str(), c.kind.name(), c.count)) }
                        td { a href={ "/failed/messages?" (serde_urlencoded::to_string([("group", c.group.as_str()), ("kind", c.kind.name())]).unwrap_or_default()) } { "by message" } }
                    }
                }
                @if counts.is_empty() { tr { td colspan="6" .muted { "Nothing failed." } } }
            }
        }
    })
}

async fn failed_page(State(app): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(layout(
        "Failed",
        "/failed",
        "/fragments/failed",
        failed(&app).await?,
    ))
}

/// A button that sends one request (confirmed first) and shows the answer.
fn action(url: &str, method: &str, label: &str, confirm: &str) -> Markup {
    html! {
        form data-json=(url) data-direct="" data-method=(method) data-confirm=(confirm) {
            button type="submit" name=(label) { (label) }
        }
    }
}

async fn schedules(app: &AppState) -> Result<Markup, WebError> {
    let schedules = app.proxy.list_schedules().await?;
    Ok(html! {
        table {
            thead { tr {
                th { "schedule" } th { "cron" } th { "time zone" } th { "group" } th { "handler" }
                th.num { "fired" } th { "last tick" } th { "next tick" } th { "" } th { "" }
            } }
            tbody {
                @for s in &schedules {
                    @let name = s.spec.name.to_string();
                    tr data-schedule=(name) {
                        td { (name) } td { code { (s.spec.cron) } } td { (s.spec.time_zone) }
                        td { (s.spec.task.group) } td { (s.spec.task.handler) }
                        td.num { (s.fired) }
                        td { (s.last_tick.map(crate::json::time).unwrap_or_default()) }
                        td.next-tick {
                            @if s.paused { span.muted { "paused" } } @else {
                                (s.next_tick.map(crate::json::time).unwrap_or_else(|| "none".to_owned()))
                            }
                        }
                        td {
                            @if s.paused {
                                (action(&format!("/api/v1/schedules/{name}/resume"), "POST", "Resume", &format!("Resume {name}?")))
                            } @else {
                                (action(&format!("/api/v1/schedules/{name}/pause"), "POST", "Pause", &format!("Pause {name}?")))
                            }
                        }
                        td { (action(&format!("/api/v1/schedules/{name}"), "DELETE", "Delete", &format!("Delete {name}? It fires no more."))) }
                    }
                }
                @if schedules.is_empty() { tr { td colspan="10" .muted { "No schedule." } } }
            }
        }
    })
}

async fn broadcasts(app: &AppState) -> Result<Markup, WebError> {
    let mut query = mawex_api::BroadcastQuery::default();
    query.limit = 20;
    let page = app.proxy.list_broadcasts(query).await?;
    Ok(html! {
        @for b in page.broadcasts.iter().rev() {
            @let view = crate::json::Broadcast::from(b);
            h2 { (view.app) " " (view.version) " " span.muted { "#" (view.id) " · " (view.group) " · fired " (view.fired_at) @if view.aborted { " · aborted" } } }
            table {
                thead { tr { th { "target" } th { "pulled from" } th { "state" } th { "version" } th.num { "attempts" } th { "started" } th { "finished" } th { "error" } } }
                tbody {
                    @for t in &view.targets {
                        tr {
                            td { (t.pod) } td { (t.source.clone().unwrap_or_default()) }
                            td class={ "state-" (t.state) } { (t.state) }
                            td { (t.version.clone().unwrap_or_default()) } td.num { (t.attempts) }
                            td { (t.started_at.clone().unwrap_or_default()) }
                            td { (t.finished_at.clone().unwrap_or_default()) }
                            td.bad { @if let Some(e) = &t.error { (e.kind) ": " (e.message) } }
                        }
                    }
                }
            }
            (propagation(&view.targets))
        }
        @if page.broadcasts.is_empty() { p.muted { "No broadcast yet." } }
    })
}

/// Who pulled from whom, as a tree from the origin: each target under the pod it pulled
/// from. A target that pulled from a pod the tree does not reach from the origin (one that
/// had the version already, say) heads a tree of its own; the targets that pulled from
/// nowhere yet, or need not, are listed after.
fn propagation(targets: &[crate::json::Target]) -> Markup {
    use std::collections::{BTreeMap, HashSet};
    type Target = crate::json::Target;
    let mut children: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
    let mut roots: Vec<&Target> = Vec::new();
    for t in targets {
        match t.source.as_deref() {
            Some("origin") => roots.push(t),
            Some(pod) => children.entry(pod).or_default().push(t),
            None => {}
        }
    }
    fn node(
        t: &Target,
        children: &BTreeMap<&str, Vec<&Target>>,
        seen: &mut HashSet<String>,
    ) -> Option<Markup> {
        // Each target once: a loop of sources ends where it began.
        if !seen.insert(t.pod.clone()) {
            return None;
        }
        let under: Vec<&Target> = children.get(t.pod.as_str()).cloned().unwrap_or_default();
        let subtree: Vec<Markup> = under
            .iter()
            .filter_map(|c| node(c, children, seen))
            .collect();
        Some(html! {
            li {
                span class={ "state-" (t.state) } { (t.pod) }
                " " span.muted { (t.state) @if let Some(v) = &t.version { " · " (v) } }
                @if !subtree.is_empty() { ul { @for s in &subtree { (s) } } }
            }
        })
    }
    let mut seen = HashSet::new();
    let from_origin: Vec<Markup> = roots
        .iter()
        .filter_map(|t| node(t, &children, &mut seen))
        .collect();
    // Sources the origin's tree does not reach: each heads its own.
    let mut elsewhere: Vec<(String, Vec<Markup>)> = Vec::new();
    for (source, pulled) in &children {
        let unreached: Vec<&Target> = pulled
            .iter()
            .copied()
            .filter(|t| !seen.contains(&t.pod))
            .collect();
        let rest: Vec<Markup> = unreached
            .into_iter()
            .filter_map(|t| node(t, &children, &mut seen))
            .collect();
        if !rest.is_empty() {
            elsewhere.push(((*source).to_owned(), rest));
        }
    }
    let unpulled: Vec<&Target> = targets.iter().filter(|t| t.source.is_none()).collect();
    html! {
        details.propagation open {
            summary { "Propagation" }
            div.tree {
                span.muted { "origin" }
                ul { @for n in &from_origin { (n) } }
                @for (source, rest) in &elsewhere {
                    span.muted { (source) }
                    ul { @for n in rest { (n) } }
                }
                @if !unpulled.is_empty() {
                    p.muted {
                        "pulled from nowhere: "
                        @for (i, t) in unpulled.iter().enumerate() {
                            @if i > 0 { ", " }
                            (t.pod) " (" (t.state) ")"
                        }
                    }
                }
            }
        }
    }
}

async fn schedules_page(State(app): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(layout(
        "Schedules",
        "/schedules",
        "/fragments/schedules",
        schedules(&app).await?,
    ))
}

async fn broadcasts_page(State(app): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(layout(
        "Broadcasts",
        "/broadcasts",
        "/fragments/broadcasts",
        broadcasts(&app).await?,
    ))
}

/// A line of the failed queue: a group and a kind of last error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailedLine {
    group: String,
    kind: String,
}

/// The most failed tasks of a line whose messages are looked at (a page that stays quick).
const MESSAGES_SCANNED: usize = 10_000;
/// The longest message shown (and counted as one).
const MESSAGE_SHOWN: usize = 300;

/// A line of the failed queue by message: the commonest first, each with the search that
/// finds its tasks (and acts on all of them from the tasks page).
async fn failed_messages(app: &AppState, line: &FailedLine) -> Result<Markup, WebError> {
    use std::collections::HashMap;
    let group = crate::json::group("group", &line.group)?;
    let kind = crate::json::kind(&line.kind)?;
    let mut query = mawex_api::ListQuery::default()
        .group(group.clone())
        .state(mawex_api::TaskState::Failed)
        .limit(mawex_api::MAX_LIST_LIMIT)
        .without_bodies();
    let (mut counts, mut scanned, mut more) = (HashMap::<String, u64>::new(), 0usize, false);
    let mut of_kind: u64 = 0;
    loop {
        let page = app.proxy.list(query.clone()).await?;
        for task in &page.tasks {
            let error = match task.result.as_ref().map(|r| &r.outcome) {
                Some(mawex_api::Outcome::Failed(error)) => Some(error),
                _ => task.failures.last().map(|f| &f.error),
            };
            if let Some(error) = error.filter(|e| e.kind == kind) {
                of_kind += 1;
                let message: String = error.message.chars().take(MESSAGE_SHOWN).collect();
                *counts.entry(message).or_default() += 1;
            }
        }
        scanned += page.tasks.len();
        match page.next {
            Some(next) if scanned < MESSAGES_SCANNED => query = query.after(next),
            Some(_) => {
                more = true;
                break;
            }
            None => break,
        }
    }
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(50);
    // The search of a message: its group, its kind, its text (a message that holds another
    // is found with it: the search shows how many before a bulk action).
    let search = |message: &str| {
        serde_urlencoded::to_string([
            ("group", line.group.as_str()),
            ("state", "failed"),
            ("kind", kind.name()),
            ("error", message),
        ])
        .unwrap_or_default()
    };
    Ok(html! {
        p.muted {
            "Failed tasks of " (group) " whose last error is " (kind.name()) ", by message"
            @if more { " (of the first " (scanned) " failed tasks of the group, the " (of_kind) " of this kind)" }
            ". Each search finds them all, and acts on all of them in bulk."
        }
        table.messages {
            thead { tr { th { "message" } th.num { "failed" } th { "" } } }
            tbody {
                @for (message, count) in &counts {
                    tr {
                        td.bad { (message) }
                        td.num { (count) }
                        td {
                            // A blank message searches for nothing: no link that finds them all.
                            @if !message.trim().is_empty() { a href={ "/tasks?" (search(message)) } { "search" } }
                        }
                    }
                }
                @if counts.is_empty() { tr { td colspan="3" .muted { "None." } } }
            }
        }
    })
}

async fn failed_messages_page(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, WebError> {
    let query = query.unwrap_or_default();
    let line: FailedLine = serde_urlencoded::from_str(&query)
        .map_err(|e| WebError::BadRequest(format!("the line: {e}")))?;
    let content = failed_messages(&app, &line).await?;
    Ok(layout(
        "Failed, by message",
        "/failed",
        &format!("/fragments/failed-messages?{query}"),
        content,
    ))
}

#[cfg(test)]
mod tests {
    use crate::json::Target;

    fn target(pod: &str, source: Option<&str>, state: &'static str) -> Target {
        Target {
            pod: pod.to_owned(),
            version: None,
            state,
            source: source.map(str::to_owned),
            attempts: 1,
            started_at: None,
            finished_at: None,
            error: None,
        }
    }

    #[test]
    fn the_propagation_tree_shows_every_target_once_whatever_its_sources() {
        let targets = [
            target("a", Some("origin"), "done"),
            target("b", Some("a"), "done"),
            target("c", Some("b"), "running"),
            // Pulled from a target that had the version already.
            target("x", None, "already-applied"),
            target("d", Some("x"), "done"),
            // A loop of sources (bad data) ends where it began.
            target("f", Some("g"), "done"),
            target("g", Some("f"), "done"),
            target("e", None, "waiting"),
        ];
        let html = super::propagation(&targets).into_string();
        let at = |needle: &str| {
            html.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing: {html}"))
        };
        assert!(at(">a<") < at(">b<") && at(">b<") < at(">c<"), "{html}");
        // Under its source's heading, after the origin's tree.
        assert!(at(">x<") < at(">d<") && at(">c<") < at(">x<"), "{html}");
        for pod in ["f", "g"] {
            let shown = format!(r#"class="state-done">{pod}</span>"#);
            assert_eq!(html.matches(&shown).count(), 1, "{html}");
        }
        assert!(
            html.contains("pulled from nowhere: x (already-applied), e (waiting)"),
            "{html}"
        );
    }
}

//! Workflows and live output over REST: `/api/v1/graphs` (submit, read, cancel) and
//! `/api/v1/tasks/{id}/output`.

use std::collections::HashMap;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use bytes::Bytes;
use mawex_api::{
    Dependency, DependencyPolicy, GraphEdge, GraphId, GraphNode, GraphSpec, GraphView, TaskOutput,
    TaskSpec,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::body;
use crate::auth::{check_group, check_visible, is_limited, Caller};
use crate::error::ErrorAnswer;
use crate::json::{task_id, time, NewTask};
use crate::{AppState, WebError};

/// A dependency policy by name: `all_succeeded` (the default) or `all_finished`.
pub(crate) fn policy(field: &str, text: Option<&str>) -> Result<DependencyPolicy, WebError> {
    text.map_or(Ok(DependencyPolicy::AllSucceeded), str::parse)
        .map_err(|e| WebError::BadRequest(format!("{field}: {e}")))
}

/// The dependencies a task names, as the API takes them.
pub(crate) fn dependencies(
    after: &[String],
    policy_name: Option<&str>,
) -> Result<Vec<Dependency>, WebError> {
    let policy = policy("policy", policy_name)?;
    after
        .iter()
        .map(|id| Ok(Dependency::on(task_id(id)?).with_policy(policy)))
        .collect()
}

/// The most distinct dependencies one request of a caller limited to groups may name (each
/// is looked up to check its group).
const MAX_CHECKED_DEPENDENCIES: usize = 10_000;

/// Refuses, for a caller limited to some groups, dependencies outside its groups (a
/// dependant gets their results). A task the master does not know may only be one of
/// `own` (submitted in the same request); one it knows is checked whatever the request
/// says of it.
pub(crate) async fn check_dependencies(
    app: &AppState,
    caller: &Caller,
    specs: &[&TaskSpec],
    own: &std::collections::HashSet<mawex_api::TaskId>,
) -> Result<(), WebError> {
    if is_limited(caller).is_none() {
        return Ok(());
    }
    let ids: std::collections::BTreeSet<_> = specs
        .iter()
        .flat_map(|s| s.after.iter().map(|d| d.task))
        .collect();
    if ids.len() > MAX_CHECKED_DEPENDENCIES {
        return Err(WebError::BadRequest(format!(
            "a caller limited to some groups names at most {MAX_CHECKED_DEPENDENCIES} tasks \
             to run after in one request, not {}",
            ids.len()
        )));
    }
    for id in ids {
        match app.proxy.get(id).await {
            Ok(view) => check_visible(caller, &view)?,
            Err(mawex_api::ApiError::NotFound(_)) if own.contains(&id) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A node of a graph to submit: a task under a name.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewNode {
    /// Its name in the graph.
    pub(crate) name: String,
    /// Its task (its `id` is not used: a node's id derives from the graph's and its name).
    pub(crate) task: NewTask,
}

/// An edge of a graph to submit.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEdge {
    /// The node that runs first.
    pub(crate) from: String,
    /// The node that runs after it.
    pub(crate) to: String,
    /// `all_succeeded` (default: a failed `from` cancels `to`) or `all_finished`.
    #[serde(default)]
    pub(crate) policy: Option<String>,
    /// Whether `from`'s result is one of `to`'s inputs (default true).
    #[serde(default)]
    pub(crate) pass_output: Option<bool>,
}

/// A graph to submit.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGraph {
    /// Its id (a UUID); submitting the same graph again is harmless. Default: a fresh one.
    #[serde(default)]
    pub(crate) id: Option<String>,
    /// Its nodes.
    pub(crate) nodes: Vec<NewNode>,
    /// Who runs after whom.
    #[serde(default)]
    pub(crate) edges: Vec<NewEdge>,
}

/// The answer to a graph submit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubmittedGraph {
    /// The graph's id.
    pub(crate) id: String,
    /// It was recorded now (false: it was known, the same).
    pub(crate) created: bool,
}

/// A node of a graph as it is now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Node {
    /// Its name.
    pub(crate) name: String,
    /// Its task's id.
    pub(crate) task: String,
    /// Its task's state.
    pub(crate) state: &'static str,
    /// The nodes it runs after, by name.
    pub(crate) after: Vec<String>,
}

/// A graph as it is now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Graph {
    /// Its id.
    pub(crate) id: String,
    /// When the master accepted it.
    pub(crate) submitted_at: String,
    /// Every node has finished.
    pub(crate) finished: bool,
    /// Its nodes, dependencies first.
    pub(crate) nodes: Vec<Node>,
}

impl From<&GraphView> for Graph {
    fn from(view: &GraphView) -> Self {
        let names: HashMap<_, _> = view
            .nodes
            .iter()
            .map(|n| (n.task, n.name.as_str()))
            .collect();
        Graph {
            id: view.id.to_string(),
            submitted_at: time(view.submitted_at),
            finished: view.is_finished(),
            nodes: view
                .nodes
                .iter()
                .map(|n| Node {
                    name: n.name.clone(),
                    task: n.task.to_string(),
                    state: n.state.name(),
                    after: n
                        .after
                        .iter()
                        .map(|t| {
                            names
                                .get(t)
                                .map_or_else(|| t.to_string(), |s| (*s).to_owned())
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn graph_id(text: &str) -> Result<GraphId, WebError> {
    text.parse()
        .map_err(|e| WebError::BadRequest(format!("{text:?} is not a graph id: {e}")))
}

/// A token limited to some groups reads no graph: its nodes may be in any group.
fn unlimited(caller: &Caller) -> Result<(), WebError> {
    match is_limited(caller) {
        Some(_) => Err(WebError::Api(mawex_api::ApiError::PermissionDenied(
            "a token limited to some groups cannot read or cancel graphs".into(),
        ))),
        None => Ok(()),
    }
}

/// Submits a workflow graph: all its tasks or none, idempotently by its id.
#[utoipa::path(
    post, path = "/api/v1/graphs", tag = "graphs",
    request_body = NewGraph,
    responses(
        (status = 200, body = SubmittedGraph),
        (status = 400, description = "A cycle, a dangling edge, a bad task (the message names the node)", body = ErrorAnswer),
        (status = 404, description = "A dependency outside the graph is unknown", body = ErrorAnswer),
        (status = 409, description = "The id is used by another graph", body = ErrorAnswer),
        (status = 413, description = "A fan-in whose inputs could outgrow the payload limit", body = ErrorAnswer),
    )
)]
pub(crate) async fn submit_graph(
    State(app): State<AppState>,
    caller: Caller,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmittedGraph>, WebError> {
    let new: NewGraph = body(&app, bytes)?;
    let mut nodes = Vec::with_capacity(new.nodes.len());
    for node in new.nodes {
        let spec = node.task.spec()?;
        check_group(&caller, &spec.group)?;
        nodes.push(GraphNode::new(node.name, spec));
    }
    let edges = new
        .edges
        .into_iter()
        .map(|e| {
            let policy = policy("edges.policy", e.policy.as_deref())?;
            let edge = GraphEdge::new(e.from, e.to).with_policy(policy);
            Ok(match e.pass_output {
                Some(false) => edge.without_output(),
                _ => edge,
            })
        })
        .collect::<Result<Vec<_>, WebError>>()?;
    let mut graph = GraphSpec::new(nodes, edges);
    if let Some(id) = &new.id {
        graph = graph.with_id(graph_id(id)?);
    }
    let own = graph
        .nodes
        .iter()
        .map(|n| graph.id.node_id(&n.name))
        .collect();
    let refs: Vec<&TaskSpec> = graph.nodes.iter().map(|n| &n.spec).collect();
    check_dependencies(&app, &caller, &refs, &own).await?;
    let ack = app.proxy.submit_graph(graph).await?;
    Ok(Json(SubmittedGraph {
        id: ack.id.to_string(),
        created: ack.created,
    }))
}

/// A graph and every node's state.
#[utoipa::path(
    get, path = "/api/v1/graphs/{id}", tag = "graphs",
    params(("id" = String, Path, description = "The graph's id")),
    responses(
        (status = 200, body = Graph),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
pub(crate) async fn get_graph(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Graph>, WebError> {
    unlimited(&caller)?;
    let view = app.proxy.graph(graph_id(&id)?).await?;
    Ok(Json(Graph::from(&view)))
}

/// What a graph's cancel did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct CancelledNodes {
    /// Nodes that had not finished and are cancelled now.
    pub(crate) cancelled: u64,
}

/// Cancels every node of a graph that has not finished.
#[utoipa::path(
    post, path = "/api/v1/graphs/{id}/cancel", tag = "graphs",
    params(("id" = String, Path, description = "The graph's id")),
    responses(
        (status = 200, body = CancelledNodes),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
pub(crate) async fn cancel_graph(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CancelledNodes>, WebError> {
    unlimited(&caller)?;
    let cancelled = app.proxy.cancel_graph(graph_id(&id)?).await?;
    Ok(Json(CancelledNodes { cancelled }))
}

/// Which lines of a task's output.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputQuery {
    /// Lines after this one (default 0: from the first kept).
    #[serde(default)]
    after: u64,
}

/// One line of a task's output.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Line {
    /// Its number in its attempt, from 1.
    pub(crate) seq: u64,
    /// `stdout`, `stderr` or `log`.
    pub(crate) stream: &'static str,
    /// Its text.
    pub(crate) text: String,
}

/// The last lines of a task's latest attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Output {
    /// The attempt (0: nothing printed yet).
    pub(crate) attempt: u32,
    /// The lines after the one asked for.
    pub(crate) lines: Vec<Line>,
    /// Lines after the one asked for that are gone.
    pub(crate) dropped: u64,
    /// The attempt ended.
    pub(crate) ended: bool,
    /// The task finished.
    pub(crate) finished: bool,
}

impl From<&TaskOutput> for Output {
    fn from(o: &TaskOutput) -> Self {
        Output {
            attempt: o.attempt.0,
            lines: o
                .lines
                .iter()
                .map(|l| Line {
                    seq: l.seq,
                    stream: l.stream.name(),
                    text: l.text.clone(),
                })
                .collect(),
            dropped: o.dropped,
            ended: o.ended,
            finished: o.finished,
        }
    }
}

/// A task's live output: the last lines of its latest attempt, kept bounded by the master
/// (not across its restarts). Ask again with the last line's `seq` as `after` to follow.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/output", tag = "tasks",
    params(("id" = String, Path, description = "The task's id"), OutputQuery),
    responses(
        (status = 200, body = Output),
        (status = 404, description = "Unknown", body = ErrorAnswer),
    )
)]
pub(crate) async fn task_output(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<OutputQuery>,
) -> Result<Json<Output>, WebError> {
    let id = task_id(&id)?;
    if is_limited(&caller).is_some() {
        check_visible(&caller, &app.proxy.get(id).await?)?;
    }
    let output = app.proxy.task_output(id, query.after).await?;
    Ok(Json(Output::from(&output)))
}

/// Past this many nodes, or edges, a graph is shown as a table only.
const MAX_DRAWN_NODES: usize = 2_000;
const MAX_DRAWN_EDGES: usize = 10_000;
/// The most nodes the table shows.
const MAX_TABLE_ROWS: usize = 2_000;

/// A graph drawn in layers from left to right (each node one column after the last of the
/// nodes it runs after), nodes coloured by state, then a table of its nodes.
pub(crate) fn graph_markup(view: &GraphView) -> maud::Markup {
    use maud::{html, PreEscaped};
    let index: HashMap<_, _> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.task, i))
        .collect();
    // Nodes come dependencies first: one pass gives each its layer.
    let mut layer = vec![0usize; view.nodes.len()];
    for (i, node) in view.nodes.iter().enumerate() {
        layer[i] = node
            .after
            .iter()
            .filter_map(|t| index.get(t))
            .map(|&d| layer[d] + 1)
            .max()
            .unwrap_or(0);
    }
    let edges: usize = view.nodes.iter().map(|n| n.after.len()).sum();
    let drawn = view.nodes.len() <= MAX_DRAWN_NODES && edges <= MAX_DRAWN_EDGES;
    let svg = drawn.then(|| {
        const W: usize = 150;
        const H: usize = 34;
        let mut row = vec![0usize; layer.iter().max().map_or(0, |m| m + 1)];
        let mut at = vec![(0usize, 0usize); view.nodes.len()];
        for (i, &l) in layer.iter().enumerate() {
            at[i] = (l * W + 10, row[l] * H + 10);
            row[l] += 1;
        }
        let width = row.len() * W + 20;
        let height = row.iter().max().copied().unwrap_or(1) * H + 20;
        let mut svg = format!(
            r#"<svg class="graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="the graph">"#
        );
        for (i, node) in view.nodes.iter().enumerate() {
            for dep in node.after.iter().filter_map(|t| index.get(t)) {
                let (x1, y1) = (at[*dep].0 + 120, at[*dep].1 + 12);
                let (x2, y2) = (at[i].0, at[i].1 + 12);
                svg.push_str(&format!(
                    r#"<line class="edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"/>"#
                ));
            }
        }
        for (i, node) in view.nodes.iter().enumerate() {
            let (x, y) = at[i];
            let name = maud::html! { (node.name) }.into_string();
            svg.push_str(&format!(
                r#"<a href="/tasks/{task}"><g class="node state-{state}"><title>{name}: {state}</title><rect x="{x}" y="{y}" width="120" height="24" rx="4"/><text x="{tx}" y="{ty}">{short}</text></g></a>"#,
                task = node.task,
                state = node.state.name(),
                tx = x + 6,
                ty = y + 16,
                short = maud::html! { (shorten(&node.name, 16)) }.into_string(),
            ));
        }
        svg.push_str("</svg>");
        svg
    });
    let graph = Graph::from(view);
    html! {
        p {
            (graph.nodes.len()) " nodes"
            @for state in mawex_api::TaskState::ALL {
                @let n = view.count(state);
                @if n > 0 { " · " span class={ "state-" (state.name()) } { (n) " " (state.name()) } }
            }
            " · accepted " (graph.submitted_at)
        }
        @if let Some(svg) = svg { div.graph { (PreEscaped(svg)) } }
        @else { p.muted { "Over " (MAX_DRAWN_NODES) " nodes or " (MAX_DRAWN_EDGES) " edges: not drawn." } }
        @if graph.nodes.len() > MAX_TABLE_ROWS {
            p.muted { "The first " (MAX_TABLE_ROWS) " nodes of " (graph.nodes.len()) " (dependencies first); the API has them all." }
        }
        table {
            thead { tr { th { "node" } th { "state" } th { "runs after" } } }
            @for node in graph.nodes.iter().take(MAX_TABLE_ROWS) {
                tr {
                    td { a href={ "/tasks/" (node.task) } { (node.name) } }
                    td class={ "state-" (node.state) } { (node.state) }
                    td { (node.after.join(", ")) }
                }
            }
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max - 1).collect();
    short.push('…');
    short
}

/// The page of graph `id`'s fragment.
pub(crate) async fn graph_fragment(app: &AppState, id: &str) -> Result<maud::Markup, WebError> {
    let view = app.proxy.graph(graph_id(id)?).await?;
    Ok(graph_markup(&view))
}

/// The task page's part about workflows: what it runs after, why it was cancelled, its
/// graph, and its live output (the last lines).
pub(crate) async fn task_extras(
    app: &AppState,
    view: &mawex_api::TaskView,
) -> Result<maud::Markup, WebError> {
    use maud::html;
    const LAST_LINES: usize = 200;
    // A master that keeps no output (an older one), or cannot answer now, shows none: the
    // rest of the page stands.
    let output = app.proxy.task_output(view.spec.id, 0).await.ok();
    Ok(html! {
        @if !view.spec.after.is_empty() {
            h2 { "Runs after" }
            table {
                @for dep in &view.spec.after {
                    tr {
                        td { a href={ "/tasks/" (dep.task) } { (dep.task) } }
                        td { @if dep.policy == DependencyPolicy::AllFinished { "when it finished" } @else { "when it succeeded" } }
                        td.muted { @if dep.pass_output { "its output is an input" } @else { "" } }
                    }
                }
            }
        }
        @if let Some(root) = view.cancelled_by {
            p.bad { "Cancelled because " a href={ "/tasks/" (root) } { (root) } " failed or was cancelled; retrying it brings this task back." }
        }
        @if let Some(graph) = view.graph {
            p { "A node of graph " a href={ "/graphs/" (graph) } { (graph) } "." }
        }
        @if let Some(output) = output.filter(|o| !o.lines.is_empty()) {
            h2 { "Live output" span.muted { " (attempt " (output.attempt.0) @if !output.ended { ", running" } ")" } }
            @let skip = output.lines.len().saturating_sub(LAST_LINES);
            @let hidden = output.dropped + skip as u64;
            @if hidden > 0 { p.muted { (hidden) " earlier lines not shown" } }
            pre.output {
                @for line in &output.lines[skip..] {
                    span class={ "line " (line.stream.name()) } { (line.text) } "\n"
                }
            }
        }
    })
}

//! `mawex graph`: a workflow from a TOML file, submitted as one; its nodes' states; cancel.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use mawex::{
    Bytes, DependencyPolicy, GraphEdge, GraphId, GraphNode, GraphSpec, GraphView, MasterProxy,
    RetryPolicy, TaskSpec, TaskState,
};
use serde::{Deserialize, Serialize};

use crate::cli::{GraphAction, Output};
use crate::config::Config;
use crate::output::{self, Rows};
use crate::tasks::{connect, group};
use crate::CliError;

/// How often `--wait` asks for the graph's state.
const POLL: Duration = Duration::from_millis(500);

/// A graph file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphFile {
    /// Its id (a UUID). Give one to make submitting the file again harmless; without one,
    /// each submit makes a new graph.
    id: Option<String>,
    /// Its nodes, as `[[node]]` tables.
    #[serde(rename = "node", default)]
    nodes: Vec<NodeFile>,
}

/// A `[[node]]` of a graph file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    group: String,
    handler: String,
    #[serde(default)]
    payload: String,
    /// The nodes it runs after, by name.
    #[serde(default)]
    after: Vec<String>,
    /// `all-succeeded` (the default) or `all-finished`, for each of its `after` edges.
    policy: Option<String>,
    /// False: the outputs of `after` are not among its inputs.
    pass_output: Option<bool>,
    output_limit: Option<u64>,
    priority: Option<i32>,
    /// Attempts in all.
    retry: Option<u32>,
}

/// A dependency policy by name; `what` names where it was given.
pub(crate) fn policy(what: &str, text: Option<&str>) -> Result<DependencyPolicy, CliError> {
    text.map_or(Ok(DependencyPolicy::AllSucceeded), str::parse)
        .map_err(|e| CliError::Usage(format!("{what}: {}", message(e))))
}

/// The graph `path` describes.
fn read_graph(path: &Path) -> Result<GraphSpec, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(CliError::io(format!("reading {}", path.display())))?;
    let file: GraphFile = Figment::from(Toml::string(&text))
        .extract()
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let mut nodes = Vec::with_capacity(file.nodes.len());
    let mut edges = Vec::new();
    for node in file.nodes {
        let mut spec = TaskSpec::new(group(&node.group)?, node.handler, Bytes::from(node.payload));
        spec.output_limit = node.output_limit;
        if let Some(priority) = node.priority {
            spec = spec.with_priority(priority);
        }
        if let Some(attempts) = node.retry {
            spec = spec.with_retry(RetryPolicy::new(attempts));
        }
        let policy = policy(&format!("node {:?}", node.name), node.policy.as_deref())?;
        for from in node.after {
            let mut edge = GraphEdge::new(from, node.name.clone()).with_policy(policy);
            if node.pass_output == Some(false) {
                edge = edge.without_output();
            }
            edges.push(edge);
        }
        nodes.push(GraphNode::new(node.name, spec));
    }
    let mut graph = GraphSpec::new(nodes, edges);
    if let Some(id) = file.id {
        graph = graph.with_id(
            id.parse()
                .map_err(|e| CliError::Usage(format!("{}: id: {e}", path.display())))?,
        );
    }
    // Checked here too, so that a bad file is named before anything is sent.
    graph
        .validate()
        .map_err(|e| CliError::Usage(format!("{}: {}", path.display(), message(e))))?;
    Ok(graph)
}

fn message(e: mawex::ApiError) -> String {
    match e {
        mawex::ApiError::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

/// The answer to a graph submit.
#[derive(Debug, Serialize)]
struct SubmittedGraph {
    id: String,
    created: bool,
    nodes: usize,
}

impl Rows for SubmittedGraph {
    fn headers() -> &'static [&'static str] {
        &["id", "created", "nodes"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.created.to_string(),
            self.nodes.to_string(),
        ]
    }
}

/// A node of a graph as `status` prints it.
#[derive(Debug, Serialize)]
struct NodeRow {
    name: String,
    task: String,
    state: String,
    after: Vec<String>,
}

impl Rows for NodeRow {
    fn headers() -> &'static [&'static str] {
        &["name", "task", "state", "after"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.task.clone(),
            self.state.clone(),
            self.after.join(","),
        ]
    }
}

fn rows(view: &GraphView) -> Vec<NodeRow> {
    let names: HashMap<_, _> = view
        .nodes
        .iter()
        .map(|n| (n.task, n.name.as_str()))
        .collect();
    view.nodes
        .iter()
        .map(|n| NodeRow {
            name: n.name.clone(),
            task: n.task.to_string(),
            state: n.state.name().to_owned(),
            after: n
                .after
                .iter()
                .map(|t| {
                    names
                        .get(t)
                        .map_or_else(|| t.to_string(), |n| (*n).to_owned())
                })
                .collect(),
        })
        .collect()
}

/// Waits until every node of graph `id` finished and prints their states; then fails (exit
/// 3) if one failed, or (exit 5) if one was cancelled.
async fn wait(
    proxy: &dyn MasterProxy,
    id: GraphId,
    timeout: Option<Duration>,
    output: Output,
) -> Result<(), CliError> {
    let waited = async {
        loop {
            let view = proxy.graph(id).await?;
            if view.is_finished() {
                return Ok::<_, CliError>(view);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let view = match timeout {
        Some(limit) => tokio::time::timeout(limit, waited)
            .await
            .map_err(|_| CliError::TimedOut(limit))??,
        None => waited.await?,
    };
    output::print(output, &rows(&view))?;
    let failed: Vec<&str> = view
        .nodes
        .iter()
        .filter(|n| n.state == TaskState::Failed)
        .map(|n| n.name.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(CliError::TaskFailed(format!(
            "graph {id}: failed: {}",
            failed.join(", ")
        )));
    }
    if view.count(TaskState::Cancelled) > 0 {
        return Err(CliError::Cancelled);
    }
    Ok(())
}

/// `mawex graph`.
///
/// # Errors
/// A bad file or id, a refused graph, a failed call, or (with `--wait`) a node that failed
/// or was cancelled.
pub(crate) async fn graph(
    config: &Config,
    output: Output,
    action: GraphAction,
) -> Result<(), CliError> {
    let proxy = connect(config)?;
    match action {
        GraphAction::Submit {
            file,
            wait: waiting,
            timeout,
        } => {
            let graph = read_graph(&file)?;
            let nodes = graph.nodes.len();
            let ack = proxy.submit_graph(graph).await?;
            if waiting {
                eprintln!("graph {} submitted; waiting", ack.id);
                return wait(&proxy, ack.id, timeout, output).await;
            }
            output::print(
                output,
                &[SubmittedGraph {
                    id: ack.id.to_string(),
                    created: ack.created,
                    nodes,
                }],
            )
        }
        GraphAction::Status { id, wait: waiting } => {
            let id = graph_id(&id)?;
            match waiting {
                true => wait(&proxy, id, None, output).await,
                false => output::print(output, &rows(&proxy.graph(id).await?)),
            }
        }
        GraphAction::Cancel { id } => {
            let id = graph_id(&id)?;
            let n = proxy.cancel_graph(id).await?;
            eprintln!("graph {id}: {n} nodes cancelled");
            Ok(())
        }
    }
}

fn graph_id(text: &str) -> Result<GraphId, CliError> {
    text.parse()
        .map_err(|e| CliError::Usage(format!("graph id: {}", message(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("graph.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn a_graph_file_becomes_nodes_and_edges() {
        let (_dir, path) = file(
            r#"
id = "01939a3c-5b8e-7a2c-9f3e-123456789abc"
[[node]]
name = "extract"
group = "etl"
handler = "extract"
output_limit = 1024
[[node]]
name = "load"
group = "etl"
handler = "load"
payload = "warehouse"
after = ["extract"]
policy = "all-finished"
"#,
        );
        let graph = read_graph(&path).expect("reads");
        assert_eq!(graph.id.to_string(), "01939a3c-5b8e-7a2c-9f3e-123456789abc");
        assert_eq!(graph.nodes.len(), 2);
        assert_eq!(graph.nodes[0].spec.output_limit, Some(1024));
        assert_eq!(graph.edges.len(), 1);
        assert_eq!(graph.edges[0].from, "extract");
        assert_eq!(graph.edges[0].policy, DependencyPolicy::AllFinished);
    }

    #[test]
    fn bad_files_are_refused_naming_what_is_wrong() {
        let refused = |text: &str| match read_graph(&file(text).1) {
            Err(CliError::Usage(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let m =
            refused("[[node]]\nname = \"a\"\ngroup = \"g\"\nhandler = \"h\"\nafter = [\"b\"]\n");
        assert!(m.contains("no node \"b\""), "{m}");
        let m = refused("[[node]]\nname = \"a\"\ngroup = \"g\"\nhandler = \"h\"\nwhen = 1\n");
        assert!(m.contains("when"), "{m}");
        let m = refused(
            "[[node]]\nname = \"a\"\ngroup = \"g\"\nhandler = \"h\"\npolicy = \"sometimes\"\n",
        );
        assert!(m.contains("sometimes"), "{m}");
        let m =
            refused("[[node]]\nname = \"a\"\ngroup = \"g\"\nhandler = \"h\"\nafter = [\"a\"]\n");
        assert!(m.contains("cycle"), "{m}");
    }
}

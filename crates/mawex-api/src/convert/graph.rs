//! Workflow graphs.

use crate::convert::task::{policy, task_state};
use crate::convert::{in_field, invalid, required, task_id};
use crate::error::ApiError;
use crate::graph::{GraphAck, GraphEdge, GraphNode, GraphNodeView, GraphSpec, GraphView};
use std::collections::HashMap;

use crate::ids::{GraphId, TaskId};
use crate::proto;
use crate::task::TaskSpec;
use crate::time::Timestamp;

/// A graph id from the wire.
pub fn graph_id(field: &str, text: &str) -> Result<GraphId, ApiError> {
    text.parse().map_err(in_field(field))
}

#[doc(hidden)]
impl From<GraphSpec> for proto::GraphSpec {
    fn from(g: GraphSpec) -> Self {
        proto::GraphSpec {
            id: g.id.to_string(),
            nodes: g
                .nodes
                .into_iter()
                .map(|n| proto::GraphNode {
                    name: n.name,
                    spec: Some(n.spec.into()),
                })
                .collect(),
            edges: g
                .edges
                .into_iter()
                .map(|e| proto::GraphEdge {
                    policy: proto::DependencyPolicy::from(e.policy) as i32,
                    ignore_output: !e.pass_output,
                    from: e.from,
                    to: e.to,
                })
                .collect(),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::GraphSpec> for GraphSpec {
    type Error = ApiError;

    fn try_from(g: proto::GraphSpec) -> Result<Self, ApiError> {
        let nodes = g
            .nodes
            .into_iter()
            .map(|n| {
                let spec = TaskSpec::try_from(required("graph.nodes.spec", n.spec)?)?;
                Ok(GraphNode::new(n.name, spec))
            })
            .collect::<Result<_, ApiError>>()?;
        let edges = g
            .edges
            .into_iter()
            .map(|e| {
                let mut edge = GraphEdge::new(e.from, e.to).with_policy(policy(e.policy)?);
                edge.pass_output = !e.ignore_output;
                Ok(edge)
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(GraphSpec::new(nodes, edges).with_id(graph_id("graph.id", &g.id)?))
    }
}

#[doc(hidden)]
impl From<GraphAck> for proto::SubmitGraphResponse {
    fn from(a: GraphAck) -> Self {
        proto::SubmitGraphResponse {
            id: a.id.to_string(),
            created: a.created,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::SubmitGraphResponse> for GraphAck {
    type Error = ApiError;

    fn try_from(a: proto::SubmitGraphResponse) -> Result<Self, ApiError> {
        Ok(GraphAck::new(graph_id("graph.id", &a.id)?, a.created))
    }
}

/// The full form: every node's task id, what it runs after by task id (what a client that
/// does not ask for the compact form reads).
#[doc(hidden)]
impl From<GraphView> for proto::GraphView {
    fn from(v: GraphView) -> Self {
        proto::GraphView {
            id: v.id.to_string(),
            submitted_at_ms: v.submitted_at.0,
            nodes: v
                .nodes
                .into_iter()
                .map(|n| proto::GraphNodeView {
                    name: n.name,
                    task: n.task.to_string(),
                    state: proto::TaskState::from(n.state) as i32,
                    after: n.after.iter().map(ToString::to_string).collect(),
                    after_nodes: Vec::new(),
                })
                .collect(),
        }
    }
}

/// The compact form (`GraphIdRequest::compact`): a task id derived from the node's name is
/// left out, and what a node runs after inside the graph goes as node indexes, ahead of the
/// ids of what it runs after outside (a graph's task names its edges first), so that the
/// largest graphs fit a message. Read back by the same `TryFrom` as the full form.
#[doc(hidden)]
pub fn compact_view(v: GraphView) -> proto::GraphView {
    let index: HashMap<TaskId, u32> = v
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((n.task, u32::try_from(i).ok()?)))
        .collect();
    let nodes = v
        .nodes
        .into_iter()
        .map(|n| {
            let inside: Vec<Option<u32>> = n.after.iter().map(|t| index.get(t).copied()).collect();
            let leading = inside.iter().take_while(|i| i.is_some()).count();
            // Indexes, then ids: exact when the graph's own dependencies come first.
            let (after_nodes, after) = if inside[leading..].iter().all(Option::is_none) {
                (
                    inside[..leading].iter().flatten().copied().collect(),
                    &n.after[leading..],
                )
            } else {
                (Vec::new(), &n.after[..])
            };
            let derived = v.id.node_id(&n.name) == n.task;
            proto::GraphNodeView {
                task: if derived {
                    String::new()
                } else {
                    n.task.to_string()
                },
                after: after.iter().map(ToString::to_string).collect(),
                after_nodes,
                name: n.name,
                state: proto::TaskState::from(n.state) as i32,
            }
        })
        .collect();
    proto::GraphView {
        id: v.id.to_string(),
        submitted_at_ms: v.submitted_at.0,
        nodes,
    }
}

#[doc(hidden)]
impl TryFrom<proto::GraphView> for GraphView {
    type Error = ApiError;

    fn try_from(v: proto::GraphView) -> Result<Self, ApiError> {
        let id = graph_id("graph.id", &v.id)?;
        let tasks: Vec<TaskId> = v
            .nodes
            .iter()
            .map(|n| match n.task.as_str() {
                "" => Ok(id.node_id(&n.name)),
                task => task_id("graph.nodes.task", task),
            })
            .collect::<Result<_, _>>()?;
        let nodes = v
            .nodes
            .into_iter()
            .zip(&tasks)
            .map(|(n, task)| {
                let state = task_state("graph.nodes.state", n.state)?
                    .ok_or_else(|| invalid("graph.nodes.state is required"))?;
                let mut after: Vec<TaskId> =
                    Vec::with_capacity(n.after_nodes.len() + n.after.len());
                for i in n.after_nodes {
                    let dependency = usize::try_from(i)
                        .ok()
                        .and_then(|i| tasks.get(i))
                        .ok_or_else(|| {
                            invalid(format!(
                                "graph.nodes.after_nodes: no node {i} among {}",
                                tasks.len()
                            ))
                        })?;
                    after.push(*dependency);
                }
                for t in &n.after {
                    after.push(task_id("graph.nodes.after", t)?);
                }
                Ok(GraphNodeView::new(n.name, *task, state, after))
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(GraphView::new(id, Timestamp(v.submitted_at_ms), nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{DependencyPolicy, GraphEdge};
    use crate::ids::{GroupName, TaskId};
    use crate::task::TaskState;

    #[test]
    fn a_graph_and_its_view_cross_the_wire_unchanged() {
        let group = GroupName::new("g").expect("valid");
        let graph = GraphSpec::new(
            vec![
                GraphNode::new("a", TaskSpec::new(group.clone(), "h", "x")),
                GraphNode::new(
                    "b",
                    TaskSpec::new(group, "h", "y")
                        .with_output_limit(64)
                        .after(TaskId::new()),
                ),
            ],
            vec![GraphEdge::new("a", "b")
                .with_policy(DependencyPolicy::AllFinished)
                .without_output()],
        );
        let back = GraphSpec::try_from(proto::GraphSpec::from(graph.clone())).expect("decodes");
        assert_eq!(back, graph);
        let outside = TaskId::new();
        // Node `name` of the graph (under its derived id), in `state`, after `after`.
        let node = |name: &str, state: TaskState, after: Vec<TaskId>| {
            GraphNodeView::new(name.into(), graph.id.node_id(name), state, after)
        };
        let a = graph.id.node_id("a");
        let view = GraphView::new(
            graph.id,
            Timestamp(5),
            vec![
                node("a", TaskState::Running, vec![]),
                node("b", TaskState::Blocked, vec![a]),
                // After a task outside the graph, under an id not derived from its name.
                GraphNodeView::new(
                    "c".into(),
                    TaskId::new(),
                    TaskState::Blocked,
                    vec![a, outside],
                ),
            ],
        );
        // The full form: every id.
        let full = proto::GraphView::from(view.clone());
        assert!(full
            .nodes
            .iter()
            .all(|n| !n.task.is_empty() && n.after_nodes.is_empty()));
        assert_eq!(GraphView::try_from(full).expect("decodes"), view);

        let wire = compact_view(view.clone());
        // Derived ids and dependencies inside the graph go as nothing and as indexes.
        assert_eq!(wire.nodes[1].task, "");
        assert_eq!(wire.nodes[1].after_nodes, [0]);
        assert!(wire.nodes[1].after.is_empty());
        assert_ne!(wire.nodes[2].task, "");
        assert_eq!(wire.nodes[2].after_nodes, [0], "inside first, as indexes");
        assert_eq!(
            wire.nodes[2].after,
            [outside.to_string()],
            "then outside, as ids"
        );
        assert_eq!(GraphView::try_from(wire.clone()).expect("decodes"), view);
        // Outside before inside: all as ids, in order.
        let mixed = GraphView::new(
            graph.id,
            Timestamp(5),
            vec![
                node("a", TaskState::Running, vec![]),
                node("b", TaskState::Blocked, vec![outside, a]),
            ],
        );
        let compact = compact_view(mixed.clone());
        assert!(compact.nodes[1].after_nodes.is_empty());
        assert_eq!(GraphView::try_from(compact).expect("decodes"), mixed);

        let mut bad = wire;
        bad.nodes[1].after_nodes = vec![7];
        assert!(matches!(
            GraphView::try_from(bad),
            Err(ApiError::InvalidArgument(m)) if m.contains("no node 7 among 3")
        ));
    }

    #[test]
    fn the_largest_graphs_view_fits_a_message() {
        use prost::Message;
        let id = GraphId::new();
        let nodes = crate::graph::MAX_GRAPH_NODES;
        let per_node = crate::graph::MAX_GRAPH_EDGES / nodes;
        let tasks: Vec<TaskId> = (0..nodes).map(|i| id.node_id(&format!("n{i}"))).collect();
        let view = GraphView::new(
            id,
            Timestamp(5),
            (0..nodes)
                .map(|i| {
                    let after = (1..=per_node)
                        .filter_map(|d| i.checked_sub(d))
                        .map(|d| tasks[d]);
                    GraphNodeView::new(
                        format!("n{i}"),
                        tasks[i],
                        TaskState::Blocked,
                        after.collect(),
                    )
                })
                .collect(),
        );
        let bytes = compact_view(view).encoded_len();
        assert!(
            bytes < 16 * 1024 * 1024,
            "{bytes} bytes: more than a server's default message"
        );
    }

    #[test]
    fn an_unknown_policy_is_refused() {
        let mut wire = proto::GraphSpec::from(GraphSpec::new(Vec::new(), Vec::new()));
        wire.edges.push(proto::GraphEdge {
            from: "a".into(),
            to: "b".into(),
            policy: 7,
            ignore_output: false,
        });
        let err = GraphSpec::try_from(wire).expect_err("refused");
        assert!(err.to_string().contains("dependency policy 7"), "{err}");
    }
}

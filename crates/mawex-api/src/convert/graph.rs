//! Workflow graphs.

use crate::convert::task::{policy, task_state};
use crate::convert::{in_field, invalid, required, task_id};
use crate::error::ApiError;
use crate::graph::{GraphAck, GraphEdge, GraphNode, GraphNodeView, GraphSpec, GraphView};
use crate::ids::GraphId;
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
                })
                .collect(),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::GraphView> for GraphView {
    type Error = ApiError;

    fn try_from(v: proto::GraphView) -> Result<Self, ApiError> {
        let nodes = v
            .nodes
            .into_iter()
            .map(|n| {
                let state = task_state("graph.nodes.state", n.state)?
                    .ok_or_else(|| invalid("graph.nodes.state is required"))?;
                let after = n
                    .after
                    .iter()
                    .map(|t| task_id("graph.nodes.after", t))
                    .collect::<Result<_, _>>()?;
                Ok(GraphNodeView::new(
                    n.name,
                    task_id("graph.nodes.task", &n.task)?,
                    state,
                    after,
                ))
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(GraphView::new(
            graph_id("graph.id", &v.id)?,
            Timestamp(v.submitted_at_ms),
            nodes,
        ))
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
        let view = GraphView::new(
            graph.id,
            Timestamp(5),
            vec![GraphNodeView::new(
                "b".into(),
                graph.id.node_id("b"),
                TaskState::Blocked,
                vec![graph.id.node_id("a")],
            )],
        );
        assert_eq!(
            GraphView::try_from(proto::GraphView::from(view.clone())).expect("decodes"),
            view
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

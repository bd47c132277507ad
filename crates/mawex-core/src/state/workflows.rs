//! Workflows in the state: what each task runs after, the graphs tasks were submitted in, and
//! (derived) which tasks run after each task.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mawex_api::{GraphId, TaskId};
use serde::{Deserialize, Serialize};

use super::stored::{GraphRecord, Links};

/// The workflow part of a state.
///
/// `links` and `graphs` are durable, in persistent maps so that a copy of the state stays
/// O(1); `dependants` and `graph_nodes` are derived from `links` alone (never from which
/// tasks exist), so that a rebuild gives exactly what applying the events gave.
#[derive(Debug, Clone, Default)]
pub(crate) struct Workflows {
    links: imbl::OrdMap<TaskId, Arc<Links>>,
    graphs: imbl::OrdMap<GraphId, Arc<GraphRecord>>,
    /// The tasks that run after each task, in id order (decisions walk them in order).
    dependants: HashMap<TaskId, BTreeSet<TaskId>>,
    /// How many tasks with links each graph has left.
    graph_nodes: HashMap<GraphId, usize>,
}

impl PartialEq for Workflows {
    fn eq(&self, other: &Self) -> bool {
        self.links == other.links
            && self.graphs == other.graphs
            && self.dependants == other.dependants
            && self.graph_nodes == other.graph_nodes
    }
}

impl Eq for Workflows {}

/// The workflow part as snapshot format 7 writes it after the tasks (borrowed to encode).
#[derive(Serialize)]
pub(crate) struct WorkflowsRef<'a> {
    links: Vec<(&'a TaskId, &'a Links)>,
    graphs: Vec<&'a GraphRecord>,
}

/// The workflow part of a snapshot, decoded.
#[derive(Deserialize)]
pub(crate) struct WorkflowsOwned {
    links: Vec<(TaskId, Links)>,
    graphs: Vec<GraphRecord>,
}

impl Workflows {
    /// True when no task has links and no graph is known: snapshot format 6 holds the state.
    pub(crate) fn is_empty(&self) -> bool {
        self.links.is_empty() && self.graphs.is_empty()
    }

    /// The durable part, to encode.
    pub(crate) fn to_ref(&self) -> WorkflowsRef<'_> {
        WorkflowsRef {
            links: self.links.iter().map(|(id, l)| (id, l.as_ref())).collect(),
            graphs: self.graphs.values().map(Arc::as_ref).collect(),
        }
    }

    /// The durable part decoded, its derived part built.
    pub(crate) fn from_owned(owned: WorkflowsOwned) -> Self {
        let mut workflows = Workflows {
            links: owned
                .links
                .into_iter()
                .map(|(id, l)| (id, Arc::new(l)))
                .collect(),
            graphs: owned
                .graphs
                .into_iter()
                .map(|g| (g.id, Arc::new(g)))
                .collect(),
            ..Workflows::default()
        };
        workflows.rebuild();
        workflows
    }

    /// A copy of the durable part (O(1)), without the derived part.
    pub(crate) fn durable_copy(&self) -> Self {
        Workflows {
            links: self.links.clone(),
            graphs: self.graphs.clone(),
            ..Workflows::default()
        }
    }

    /// Builds the derived part from the links.
    pub(crate) fn rebuild(&mut self) {
        self.dependants.clear();
        self.graph_nodes.clear();
        for (id, links) in &self.links {
            for edge in links.after.iter() {
                self.dependants.entry(edge.task).or_default().insert(*id);
            }
            if let Some((graph, _)) = &links.graph {
                *self.graph_nodes.entry(*graph).or_default() += 1;
            }
        }
    }

    /// Records the links of a task just accepted.
    pub(crate) fn accept(&mut self, id: TaskId, links: Links) {
        for edge in links.after.iter() {
            self.dependants.entry(edge.task).or_default().insert(id);
        }
        if let Some((graph, _)) = &links.graph {
            *self.graph_nodes.entry(*graph).or_default() += 1;
        }
        self.links.insert(id, Arc::new(links));
    }

    /// Records a graph just accepted (its tasks come with their links).
    pub(crate) fn add_graph(&mut self, graph: &GraphRecord) {
        if !self.graphs.contains_key(&graph.id) {
            self.graphs.insert(graph.id, Arc::new(graph.clone()));
        }
    }

    /// Drops the links of a task forgotten, and its graph with its last node.
    pub(crate) fn forget(&mut self, id: &TaskId) {
        let Some(links) = self.links.remove(id) else {
            return;
        };
        for edge in links.after.iter() {
            if let Some(set) = self.dependants.get_mut(&edge.task) {
                set.remove(id);
                if set.is_empty() {
                    self.dependants.remove(&edge.task);
                }
            }
        }
        if let Some((graph, _)) = &links.graph {
            if let Some(n) = self.graph_nodes.get_mut(graph) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.graph_nodes.remove(graph);
                    self.graphs.remove(graph);
                }
            }
        }
    }

    /// Sets (or clears) why a task was cancelled.
    pub(crate) fn set_cancelled_by(&mut self, id: &TaskId, root: Option<TaskId>) {
        if let Some(links) = self.links.get_mut(id) {
            if links.cancelled_by != root {
                Arc::make_mut(links).cancelled_by = root;
            }
        }
    }

    /// The links of task `id`, if it has any.
    pub(crate) fn links(&self, id: &TaskId) -> Option<&Links> {
        self.links.get(id).map(Arc::as_ref)
    }

    /// Every task with links, in id order.
    pub(crate) fn linked(&self) -> impl Iterator<Item = &TaskId> {
        self.links.keys()
    }

    /// The tasks that run after `id`, in id order.
    pub(crate) fn dependants(&self, id: &TaskId) -> impl Iterator<Item = &TaskId> {
        self.dependants.get(id).into_iter().flatten()
    }

    /// True when some task runs after `id`.
    pub(crate) fn has_dependants(&self, id: &TaskId) -> bool {
        self.dependants.contains_key(id)
    }

    /// Graph `id`, if known.
    pub(crate) fn graph(&self, id: &GraphId) -> Option<&GraphRecord> {
        self.graphs.get(id).map(Arc::as_ref)
    }
}

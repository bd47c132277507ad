//! Reads of the state: single tasks, queues, the failed queue, pages and estimates.

use std::time::Duration;

use mawex_api::{
    ErrorKind, FailedCount, FailedFilter, GroupName, GroupSettings, ListQuery, Outcome,
    ScheduleName, TaskId, TaskPage, TaskState, TaskView, Timestamp, MAX_LIST_PAGE_BYTES,
    MAX_LIST_SCAN,
};

use super::stored::TaskResult;
use super::{MasterState, Schedule, TaskCounts, TaskEntry};

/// Queue positions are counted up to this many tasks ahead (see `position_in_queue`).
pub(crate) const MAX_POSITION_SCAN: usize = 10_000;

impl MasterState {
    pub(crate) fn task(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.tasks.get(id)
    }

    /// The task as a client sees it.
    pub fn view(&self, id: &TaskId) -> Option<TaskView> {
        self.tasks.get(id).map(|e| self.view_of(e))
    }

    /// A task's view, with what it runs after.
    fn view_of(&self, entry: &TaskEntry) -> TaskView {
        let mut view = entry.view();
        if let Some(links) = self.workflows.links(&entry.spec.id) {
            view.spec.after = links.dependencies();
            view.spec.output_limit = links.output_limit;
            view.cancelled_by = links.cancelled_by;
            view.graph = links.graph.as_ref().map(|(g, _)| *g);
        }
        view
    }

    /// The recorded result of a finished task.
    pub fn result(&self, id: &TaskId) -> Option<mawex_api::TaskResult> {
        self.tasks
            .get(id)
            .and_then(|e| e.result().cloned())
            .map(Into::into)
    }

    /// The settings of `group` (defaults if never configured).
    pub(crate) fn group_settings(&self, group: &GroupName) -> GroupSettings {
        self.groups
            .get(group)
            .copied()
            .map(Into::into)
            .unwrap_or_default()
    }

    /// Every group that has tasks or settings, by name: its tasks by state, its settings,
    /// its recent mean run time.
    pub(crate) fn group_views(&self) -> Vec<mawex_api::GroupView> {
        let mut names: std::collections::BTreeSet<&GroupName> = self.groups.keys().collect();
        names.extend(self.listed.groups());
        names
            .into_iter()
            .map(|group| {
                let mut view = mawex_api::GroupView::new(group.clone());
                let count = |state| self.listed.count(group, state);
                view.pending = count(TaskState::Pending);
                view.running = count(TaskState::Running);
                view.succeeded = count(TaskState::Succeeded);
                view.failed = count(TaskState::Failed);
                view.cancelled = count(TaskState::Cancelled);
                view.blocked = count(TaskState::Blocked);
                view.settings = self.group_settings(group);
                view.mean_run_time = self.mean_duration(group);
                view
            })
            .collect()
    }

    /// Every schedule, by name.
    pub(crate) fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        self.schedules.values()
    }

    pub(crate) fn schedule(&self, name: &ScheduleName) -> Option<&Schedule> {
        self.schedules.get(name)
    }

    /// True if some group has non-default settings (dispatch can skip the checks otherwise).
    pub(crate) fn any_group_settings(&self) -> bool {
        !self.groups.is_empty()
    }

    /// May another task of `group` start now?
    pub(crate) fn group_open(&self, group: &GroupName) -> bool {
        if self.groups.is_empty() {
            return true;
        }
        let settings = self.groups.get(group).copied().unwrap_or_default();
        !settings.paused
            && settings
                .max_concurrency
                .is_none_or(|max| self.running_in(group) < max)
    }

    /// The task deduplicating submits of `key` in `group`, if any.
    pub(crate) fn dedup_holder(&self, group: &GroupName, key: &str) -> Option<&TaskEntry> {
        self.dedup
            .get(&(group.clone(), key.to_owned()))
            .and_then(|id| self.tasks.get(id))
    }

    /// Failed tasks matching `filter`, in id order.
    pub(crate) fn failed_matching(&self, filter: &FailedFilter) -> Vec<TaskId> {
        let matches = |e: &TaskEntry| {
            e.state == TaskState::Failed
                && filter.group.as_ref().is_none_or(|g| *g == e.spec.group)
                && filter
                    .kind
                    .is_none_or(|k| e.failures().last().map(|f| f.error.kind) == Some(k))
        };
        if filter.ids.is_empty() {
            self.listed
                .ids(filter.group.as_ref(), Some(TaskState::Failed), None)
                .filter(|id| self.tasks.get(id).is_some_and(&matches))
                .collect()
        } else {
            let mut ids: Vec<TaskId> = filter
                .ids
                .iter()
                .filter(|id| self.tasks.get(id).is_some_and(&matches))
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    }

    /// The failed queue counted by group and kind of last error, from counts kept as
    /// tasks fail and leave the failed queue: O(groups × kinds), whatever the queue holds.
    pub(crate) fn failed_summary(&self) -> Vec<FailedCount> {
        let mut counts: Vec<(&GroupName, String, ErrorKind, u64)> = self
            .failed_kinds
            .iter()
            .map(|(group, kind, n)| (group, format!("{kind:?}"), kind, n))
            .collect();
        counts.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        counts
            .into_iter()
            .map(|(group, _, kind, n)| FailedCount::new(group.clone(), kind, n))
            .collect()
    }

    /// The recent mean run time of `group`'s tasks, if any finished since start-up.
    pub(crate) fn mean_duration(&self, group: &GroupName) -> Option<Duration> {
        self.durations
            .get(group)
            .map(|ms| Duration::from_millis(*ms))
    }

    /// How many ready tasks are ahead of `id` in its group's queue, counted up to
    /// [`MAX_POSITION_SCAN`] (beyond it the estimate is a lower bound): reads run on the core
    /// thread, so a page of a long queue must stay cheap.
    pub(crate) fn position_in_queue(&self, id: &TaskId) -> Option<usize> {
        let entry = self.tasks.get(id)?;
        let queue = self.pending.get(&entry.spec.group)?;
        let key = entry.queue_key();
        queue
            .contains_key(&key)
            .then(|| queue.range(..key).take(MAX_POSITION_SCAN).count())
    }

    /// Tasks of `group` running now.
    pub(crate) fn running_in(&self, group: &GroupName) -> u32 {
        self.running_by_group.get(group).copied().unwrap_or(0)
    }

    /// How many tasks are in each state.
    pub fn counts(&self) -> TaskCounts {
        self.counts
    }

    /// Number of tasks known (retained ones included).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True if no task is known.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next pending task among `groups`: highest priority first, then oldest.
    pub(crate) fn next_pending<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a GroupName>,
    ) -> Option<TaskId> {
        groups
            .into_iter()
            .filter_map(|g| self.pending.get(g)?.first_key_value())
            .min_by_key(|(key, _)| **key)
            .map(|(_, id)| *id)
    }

    /// A graph and its nodes' states, in the order its tasks were accepted.
    pub(crate) fn graph_view(&self, id: &mawex_api::GraphId) -> Option<mawex_api::GraphView> {
        let record = self.workflows.graph(id)?;
        let nodes = record
            .nodes
            .iter()
            .filter_map(|task| {
                let entry = self.task(task)?;
                let links = self.workflows.links(task)?;
                let name = links
                    .graph
                    .as_ref()
                    .map_or_else(String::new, |(_, n)| n.to_string());
                let after = links.after.iter().map(|e| e.task).collect();
                Some(mawex_api::GraphNodeView::new(
                    name,
                    *task,
                    entry.state,
                    after,
                ))
            })
            .collect();
        Some(mawex_api::GraphView::new(*id, record.at, nodes))
    }

    /// True if some task of `group` waits.
    pub(crate) fn has_pending(&self, group: &GroupName) -> bool {
        self.pending.get(group).is_some_and(|q| !q.is_empty())
    }

    #[cfg(test)]
    pub(crate) fn tasks_for_test(&self) -> impl Iterator<Item = (&TaskId, &TaskEntry)> {
        self.tasks.iter()
    }

    /// The running tasks (each with its lease holder), in id order: from the index, not a
    /// walk over every task (a restart asks, with a million tasks retained).
    pub(crate) fn running(&self) -> impl Iterator<Item = &TaskEntry> {
        self.listed
            .ids(None, Some(TaskState::Running), None)
            .filter_map(|id| self.tasks.get(&id))
    }

    /// How many results were ever recorded: the stream position of the latest.
    pub(crate) fn results_recorded(&self) -> u64 {
        self.results_recorded
    }

    /// Results recorded after `after`, oldest first.
    pub(crate) fn results_after(&self, after: u64) -> impl Iterator<Item = &TaskResult> {
        self.results
            .range(after.saturating_add(1)..)
            .filter_map(|(_, id)| self.tasks.get(id)?.result())
    }

    /// Up to `limit` tasks whose results came after stream position `after` and before
    /// `cutoff`, oldest first, with their positions.
    pub(crate) fn finished_after(
        &self,
        after: u64,
        cutoff: Timestamp,
        limit: usize,
    ) -> Vec<(u64, TaskId)> {
        self.results
            .range(after.saturating_add(1)..)
            .take_while(|(_, id)| {
                self.tasks
                    .get(id)
                    .and_then(|e| e.result())
                    .is_some_and(|r| r.finished_at < cutoff)
            })
            .take(limit)
            .map(|(seq, id)| (*seq, *id))
            .collect()
    }

    /// Tasks ahead × the group's recent mean duration ÷ the `slots` serving it.
    pub(crate) fn eta(&self, id: &TaskId, slots: u64) -> Option<Duration> {
        let group = &self.tasks.get(id)?.spec.group;
        let mean = self.mean_duration(group)?;
        if slots == 0 {
            return None;
        }
        let ahead = u64::try_from(self.position_in_queue(id)?).unwrap_or(u64::MAX);
        // `mul_f64` panics on overflow; an estimate that large is no estimate.
        Duration::try_from_secs_f64(mean.as_secs_f64() * (ahead as f64 / slots as f64)).ok()
    }

    /// A page of tasks, with wait estimates for the queued ones from the slots serving each
    /// group (`slots`).
    pub(crate) fn list_with_estimates(
        &self,
        query: &ListQuery,
        slots: impl Fn(&GroupName) -> u64,
    ) -> TaskPage {
        let mut page = self.list(query);
        for view in &mut page.tasks {
            if view.state == TaskState::Pending && view.not_before.is_none() {
                view.eta = self.eta(&view.spec.id, slots(&view.spec.group));
            }
        }
        page
    }

    /// One page of tasks matching `query` (already validated).
    pub(crate) fn list(&self, query: &ListQuery) -> TaskPage {
        self.list_scanning(query, MAX_LIST_SCAN)
    }

    /// [`Self::list`], examining at most `scan_budget` tasks.
    fn list_scanning(&self, query: &ListQuery, scan_budget: usize) -> TaskPage {
        use std::ops::Bound;
        let past = match query.after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut tasks = Vec::new();
        let mut next = None;
        let mut bytes: usize = 0;
        // A group or a state narrows the walk to the index of those tasks.
        let candidates: Box<dyn Iterator<Item = &TaskEntry> + '_> =
            if query.group.is_none() && query.state.is_none() {
                if query.newest_first {
                    let range = self.tasks.range((Bound::Unbounded, past)).rev();
                    Box::new(range.map(|(_, e)| e))
                } else {
                    Box::new(self.tasks.range((past, Bound::Unbounded)).map(|(_, e)| e))
                }
            } else {
                Box::new(
                    self.listed
                        .ids_ordered(
                            query.group.as_ref(),
                            query.state,
                            query.after,
                            query.newest_first,
                        )
                        .filter_map(|id| self.tasks.get(&id)),
                )
            };
        let payload = query
            .payload_contains
            .as_ref()
            .map(|needle| memchr::memmem::Finder::new(needle.as_ref()));
        let mut last_examined = None;
        for (examined, entry) in candidates.enumerate() {
            if tasks.len() == query.limit {
                // Full: whether more match is for the next page to find, not this one.
                next = tasks.last().map(|t: &TaskView| t.spec.id);
                break;
            }
            if examined == scan_budget {
                // Bounded: the caller resumes after the last task examined.
                next = last_examined;
                break;
            }
            last_examined = Some(entry.spec.id);
            if !matches(entry, query, payload.as_ref()) {
                continue;
            }
            let mut view = self.view_of(entry);
            if query.omit_bodies {
                omit_bodies(&mut view);
            }
            let size = view_bytes(&view);
            if !tasks.is_empty() && bytes.saturating_add(size) > MAX_LIST_PAGE_BYTES {
                next = tasks.last().map(|t: &TaskView| t.spec.id);
                break;
            }
            bytes = bytes.saturating_add(size);
            tasks.push(view);
        }
        TaskPage::new(tasks, next)
    }
}

/// Whether `entry` passes every filter of `query`; `payload` is the query's payload finder.
fn matches(
    entry: &TaskEntry,
    query: &ListQuery,
    payload: Option<&memchr::memmem::Finder<'_>>,
) -> bool {
    let spec = &entry.spec;
    let text_is = |want: &Option<String>, have: Option<&str>| {
        want.as_deref().is_none_or(|want| have == Some(want))
    };
    query.group.as_ref().is_none_or(|g| *g == spec.group)
        && query.state.is_none_or(|s| s == entry.state)
        && text_is(&query.handler, Some(&spec.handler))
        && text_is(&query.dedup_key, spec.dedup().map(|d| d.key.as_str()))
        && text_is(&query.fairness_key, spec.fairness_key.as_deref())
        && query
            .submitted_from
            .is_none_or(|from| entry.submitted_at >= from)
        && query
            .submitted_before
            .is_none_or(|before| entry.submitted_at < before)
        && payload.is_none_or(|finder| finder.find(&spec.payload).is_some())
        && query.error_text.as_deref().is_none_or(|text| {
            entry
                .last_error()
                .is_some_and(|error| error.message.contains(text))
        })
        && query
            .error_kind
            .is_none_or(|kind| entry.last_error().is_some_and(|error| error.kind == kind))
}

/// Empties what makes a view large: the payload and a successful output.
fn omit_bodies(view: &mut TaskView) {
    view.spec.payload = bytes::Bytes::new();
    if let Some(result) = &mut view.result {
        if let Outcome::Succeeded(output) = &mut result.outcome {
            *output = bytes::Bytes::new();
        }
    }
}

/// About how many bytes `view` takes on the wire: its variable-length parts, plus a
/// generous allowance for the fixed ones.
fn view_bytes(view: &TaskView) -> usize {
    const FIXED: usize = 256;
    let error_bytes = |e: &mawex_api::TaskError| e.message.len() + FIXED;
    let result = view.result.as_ref().map_or(0, |r| match &r.outcome {
        Outcome::Succeeded(output) => output.len(),
        Outcome::Failed(error) => error_bytes(error),
        _ => 0,
    });
    let failures: usize = view.failures.iter().map(|f| error_bytes(&f.error)).sum();
    FIXED
        .saturating_add(view.spec.payload.len())
        .saturating_add(view.spec.handler.len())
        .saturating_add(result)
        .saturating_add(failures)
}

#[cfg(test)]
mod tests {
    use mawex_api::{GroupName, ListQuery, TaskSpec, Timestamp};

    use crate::state::{Event, MasterState};

    /// A search the indexes cannot answer ends a page after its scan budget, and the pages
    /// that follow from its `next` find every match once, in order, either way round.
    #[test]
    fn a_scan_ends_at_its_budget_and_resumes_where_it_stopped() {
        let group = GroupName::new("g").expect("valid");
        let mut state = MasterState::new();
        let mut ids = Vec::new();
        for i in 0..100 {
            let handler = if i % 10 == 0 { "rare" } else { "common" };
            let spec = TaskSpec::new(group.clone(), handler, "p");
            ids.push(spec.id);
            state.apply(&Event::TaskAccepted {
                spec: spec.into(),
                at: Timestamp(1),
            });
        }
        let rare: Vec<_> = ids.iter().step_by(10).copied().collect();
        for newest_first in [false, true] {
            let mut query = ListQuery::default().handler("rare").limit(1000);
            query.newest_first = newest_first;
            let (mut found, mut pages, mut short_pages) = (Vec::new(), 0, 0);
            loop {
                let page = state.list_scanning(&query, 7);
                pages += 1;
                if page.next.is_some() && page.tasks.len() < query.limit {
                    short_pages += 1;
                }
                found.extend(page.tasks.iter().map(|t| t.spec.id));
                match page.next {
                    Some(next) => query = query.after(next),
                    None => break,
                }
            }
            let mut expected = rare.clone();
            if newest_first {
                expected.reverse();
            }
            assert_eq!(found, expected);
            assert_eq!(pages, 15, "100 tasks, 7 a page");
            assert_eq!(
                short_pages, 14,
                "every page but the last ended at its budget"
            );
        }
    }
}

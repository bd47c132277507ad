//! What leaves the core once a batch is durable: answers, assignments grouped per pod,
//! cancels, acknowledgements, results to waiters and streams, finished broadcasts, the feed.

use std::collections::HashMap;

use mawex_api::pod::{Assignment, MasterMessage};
use mawex_api::{BroadcastView, ResultCursor, TaskResult};

use super::core_loop::{CoreLoop, Deferred};
use super::messages::Reply;
use super::streams::{Subscriber, MAX_STREAM_LAG};
use crate::engine::Output;
use crate::journal::Journal;
use crate::state::Event;

/// Payload bytes carried by one `Assign` message at most (a single larger payload still goes,
/// alone): keeps messages well inside a transport's size limit.
const MAX_ASSIGN_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// Cuts `items` into runs whose payloads add up to at most `budget` (each run holds at least
/// one item).
fn split_by_bytes(items: Vec<Assignment>, budget: usize) -> impl Iterator<Item = Vec<Assignment>> {
    let mut runs: Vec<Vec<Assignment>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.spec.payload.len() + inputs_bytes(&item.inputs);
        match runs.last_mut() {
            Some(run) if bytes + size <= budget => {
                bytes += size;
                run.push(item);
            }
            _ => {
                bytes = size;
                runs.push(vec![item]);
            }
        }
    }
    runs.into_iter()
}

/// The bytes of a task's inputs that count against a message's size.
fn inputs_bytes(inputs: &[mawex_api::TaskResult]) -> usize {
    inputs
        .iter()
        .map(|r| match &r.outcome {
            mawex_api::Outcome::Succeeded(output) => output.len(),
            mawex_api::Outcome::Failed(error) => error.message.len(),
            _ => 0,
        })
        .sum()
}

/// What leaves the master once a batch is durable, read from the state as the batch left it:
/// the core may decide the next batch before this one is durable, and nothing of that one
/// may leave with this.
pub(super) struct Outgoing {
    /// Answers to requests, in the order they came.
    deferred: Vec<Deferred>,
    /// Messages the engine had for pods (cancels, acks, drains), by session.
    messages: Vec<(u64, MasterMessage)>,
    /// Assignments per session, with the dispatch batch that made them.
    assigns: HashMap<u64, Vec<Assignment>>,
    batch: u64,
    closed_sessions: Vec<u64>,
    /// Results recorded in the batch, in stream order, each with its waiters.
    results: Vec<(TaskResult, Vec<Reply<TaskResult>>)>,
    /// Broadcasts that finished (or were aborted), with their waiters.
    broadcasts: Vec<(BroadcastView, Vec<Reply<BroadcastView>>)>,
    /// New result streams, each with its backlog (this batch's results included).
    new_subscribers: Vec<(Subscriber, Vec<TaskResult>, Reply<()>)>,
}

impl<J: Journal> CoreLoop<J> {
    /// Gathers what may leave the master once the batch just decided is durable.
    pub(super) fn prepare(
        &mut self,
        out: Output,
        events: &[Event],
        deferred: Vec<Deferred>,
        new_subscribers: Vec<(Subscriber, Option<ResultCursor>, Reply<()>)>,
    ) -> Outgoing {
        // Assignments, grouped per pod, skipping any cancelled in the same batch.
        let mut assigns: HashMap<u64, Vec<Assignment>> = HashMap::new();
        for event in events {
            let Event::TaskAssigned { attempt, pod, .. } = event else {
                continue;
            };
            let state = self.engine.state();
            let Some(entry) = state.task(&attempt.task) else {
                continue;
            };
            if entry.current() != *attempt || entry.result().is_some() {
                continue;
            }
            if let Some(session) = self.engine.session_of(pod) {
                assigns.entry(session).or_default().push(Assignment {
                    attempt: (*attempt).into(),
                    spec: entry.spec.clone().into(),
                    env: self.engine.attempt_env(&attempt.task),
                    inputs: self.engine.inputs(&attempt.task),
                    rank: Some(entry.rank()),
                });
            }
        }

        // Every result recorded, whatever event recorded it, has the next stream position,
        // so reading the result log from the last position gathered misses none by
        // construction (a result retried away in the same batch is no longer there to send).
        let results: Vec<(TaskResult, Vec<Reply<TaskResult>>)> = self
            .engine
            .state()
            .results_after(self.delivered_seq)
            .map(|r| {
                let result: TaskResult = r.clone().into();
                let waiters = self.waiters.remove(&result.id).unwrap_or_default();
                (result, waiters)
            })
            .collect();
        self.delivered_seq = self.engine.state().results_recorded();

        let mut broadcasts = Vec::new();
        if !self.broadcast_waiters.is_empty() {
            let engine = &self.engine;
            self.broadcast_waiters.retain(|id, waiters| {
                match engine
                    .broadcast_view(*id)
                    .filter(|v| v.finished_at.is_some())
                {
                    Some(view) => {
                        broadcasts.push((view, std::mem::take(waiters)));
                        false
                    }
                    None => true,
                }
            });
        }
        let new_subscribers = new_subscribers
            .into_iter()
            .map(|(sub, after, reply)| {
                let after = after.map_or(0, |c| c.0);
                // Of its group only, and no more than the stream may lag (it is cut off at
                // that point anyway).
                let backlog = self
                    .engine
                    .state()
                    .results_after(after)
                    .filter(|r| r.group == sub.group)
                    .take(MAX_STREAM_LAG.saturating_add(1))
                    .map(|r| r.clone().into())
                    .collect();
                (sub, backlog, reply)
            })
            .collect();
        Outgoing {
            deferred,
            messages: out.messages,
            assigns,
            batch: self.engine.batch(),
            closed_sessions: out.closed_sessions,
            results,
            broadcasts,
            new_subscribers,
        }
    }

    /// Sends what a durable batch let out.
    pub(super) fn release(&mut self, outgoing: Outgoing, now: mawex_api::Timestamp) {
        let Outgoing {
            deferred,
            messages,
            assigns,
            batch,
            closed_sessions,
            results,
            broadcasts,
            new_subscribers,
        } = outgoing;
        for reply in deferred {
            reply();
        }
        // Cancels first: a pod must stop an old attempt before it hears of a newer one.
        // Acks of one session go as one message: a pod may report thousands per batch.
        let mut dead_sessions = Vec::new();
        let mut acks: HashMap<u64, Vec<mawex_api::pod::AttemptRef>> = HashMap::new();
        for (session, message) in messages {
            if let MasterMessage::Ack(attempts) = message {
                acks.entry(session).or_default().extend(attempts);
            } else if !self.send_to(session, message) {
                dead_sessions.push(session);
            }
        }
        for (session, attempts) in acks {
            if !self.send_to(session, MasterMessage::Ack(attempts)) {
                dead_sessions.push(session);
            }
        }
        for (session, assignments) in assigns {
            // Split by payload size so that no message outgrows a transport's limit.
            let mut chunks = split_by_bytes(assignments, MAX_ASSIGN_PAYLOAD_BYTES).peekable();
            while let Some(chunk) = chunks.next() {
                let more = chunks.peek().is_some();
                let message = MasterMessage::Assign {
                    batch,
                    assignments: chunk,
                    more,
                };
                if !self.send_to(session, message) {
                    dead_sessions.push(session);
                    break;
                }
            }
        }
        for session in closed_sessions {
            self.sessions.remove(&session);
        }
        for session in dead_sessions {
            self.sessions.remove(&session);
            self.engine.pod_disconnected(session, now);
        }

        // Results: streams and waiters, then new streams with their backlog (which already
        // holds this batch's results, so none is sent twice).
        for (result, mut waiters) in results {
            self.subscribers.retain(|s| s.offer(&result));
            let last = waiters.pop();
            for w in waiters {
                let _ = w.send(Ok(result.clone()));
            }
            if let Some(w) = last {
                let _ = w.send(Ok(result));
            }
        }
        for (view, waiters) in broadcasts {
            for w in waiters {
                let _ = w.send(Ok(view.clone()));
            }
        }
        for (sub, backlog, reply) in new_subscribers {
            if backlog.iter().all(|result| sub.offer(result)) {
                self.subscribers.push(sub);
            }
            let _ = reply.send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mawex_api::pod::{Assignment, AttemptRef};
    use mawex_api::{Attempt, GroupName, TaskSpec};

    use super::split_by_bytes;

    fn assignment(bytes: usize) -> Assignment {
        let spec = TaskSpec::new(
            GroupName::new("g").unwrap(),
            "h",
            Bytes::from(vec![0; bytes]),
        );
        Assignment {
            attempt: AttemptRef {
                task: spec.id,
                attempt: Attempt(1),
            },
            spec,
            env: Default::default(),
            inputs: Vec::new(),
            rank: None,
        }
    }

    #[test]
    fn assignments_are_split_by_payload_size() {
        let sizes = [40, 40, 30, 100, 5, 5];
        let runs: Vec<Vec<usize>> =
            split_by_bytes(sizes.iter().map(|&b| assignment(b)).collect(), 100)
                .map(|run| run.iter().map(|a| a.spec.payload.len()).collect())
                .collect();
        assert_eq!(runs, vec![vec![40, 40], vec![30], vec![100], vec![5, 5]]);
        assert_eq!(
            split_by_bytes(vec![assignment(500)], 100).count(),
            1,
            "an oversized one goes alone"
        );
        assert_eq!(split_by_bytes(Vec::new(), 100).count(), 0);
    }
}

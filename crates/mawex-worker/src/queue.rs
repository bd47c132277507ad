//! The leases a pod holds and has not started, in the order it starts them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mawex_api::pod::{Assignment, QueueRank};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::shared::lock;

/// Leases waiting for a slot: lowest rank first (the order the master would start them in,
/// had it not leased ahead), then in the order they came. A lease the master ranks ahead
/// of those the pod holds already (a higher priority, a workflow's task taking the place of
/// the dependency that just finished) goes ahead of them, so leasing ahead does not make
/// it wait behind the pod's whole queue.
#[derive(Default)]
pub(crate) struct LeaseQueue {
    waiting: Mutex<Waiting>,
    /// One wake-up per lease queued, for an executor waiting on an empty queue.
    queued: Notify,
}

#[derive(Default)]
struct Waiting {
    leases: BTreeMap<(QueueRank, u64), Assignment>,
    /// Leases ever queued: the order they came in, among equal ranks.
    arrived: u64,
}

impl LeaseQueue {
    /// Queues `a`, waking an executor.
    pub(crate) fn push(&self, a: Assignment) {
        {
            let mut waiting = lock(&self.waiting);
            waiting.arrived = waiting.arrived.wrapping_add(1);
            let key = (a.rank.unwrap_or(QueueRank::LAST), waiting.arrived);
            waiting.leases.insert(key, a);
        }
        self.queued.notify_one();
    }

    /// Takes every queued lease, in queue order.
    pub(crate) fn take_all(&self) -> Vec<Assignment> {
        std::mem::take(&mut lock(&self.waiting).leases)
            .into_values()
            .collect()
    }

    /// The next lease, waiting for one while the queue is empty; `None` once `stop` is
    /// cancelled (checked first, so that no lease is taken after it).
    pub(crate) async fn next(&self, stop: &CancellationToken) -> Option<Assignment> {
        loop {
            // Registered before the queue is looked at, so that a push in between wakes it.
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if stop.is_cancelled() {
                return None;
            }
            if let Some((_, a)) = lock(&self.waiting).leases.pop_first() {
                return Some(a);
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                () = &mut queued => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use mawex_api::pod::AttemptRef;
    use mawex_api::{Attempt, Bytes, GroupName, TaskSpec};

    use super::*;

    fn lease(rank: Option<(i32, u64, u64)>) -> Assignment {
        let spec = TaskSpec::new(GroupName::new("g").expect("valid"), "h", Bytes::new());
        Assignment {
            attempt: AttemptRef {
                task: spec.id,
                attempt: Attempt(1),
            },
            spec,
            env: Default::default(),
            inputs: Vec::new(),
            rank: rank.map(|(priority, round, order)| QueueRank {
                priority,
                round,
                order,
            }),
        }
    }

    #[tokio::test]
    async fn leases_start_by_rank_then_as_they_came() {
        let queue = LeaseQueue::default();
        let stop = CancellationToken::new();
        let leases = [
            lease(Some((0, 10, 1))),
            lease(None),
            lease(Some((0, 10, 2))),
            // Leased later, ranked ahead: a dependant taking its dependency's place.
            lease(Some((0, 5, 9))),
            // A higher priority goes first whatever its round.
            lease(Some((3, 99, 99))),
            lease(None),
        ];
        let ids: Vec<_> = leases.iter().map(|a| a.attempt.task).collect();
        for a in leases {
            queue.push(a);
        }
        let mut started = Vec::new();
        for _ in 0..ids.len() {
            let a = queue.next(&stop).await.expect("queued");
            started.push(a.attempt.task);
        }
        assert_eq!(started, [ids[4], ids[3], ids[0], ids[2], ids[1], ids[5]]);
    }

    #[tokio::test]
    async fn a_waiting_executor_wakes_for_a_lease_and_stops_when_told() {
        let queue = Arc::new(LeaseQueue::default());
        let stop = CancellationToken::new();
        let waiter = {
            let (queue, stop) = (queue.clone(), stop.clone());
            tokio::spawn(async move { queue.next(&stop).await })
        };
        let a = lease(Some((0, 1, 1)));
        let id = a.attempt.task;
        queue.push(a);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got.map(|a| a.attempt.task), Some(id));

        // Stopped: nothing is taken, not even a queued lease, which stays for take_all.
        queue.push(lease(None));
        stop.cancel();
        assert!(queue.next(&stop).await.is_none());
        assert_eq!(queue.take_all().len(), 1);
    }
}

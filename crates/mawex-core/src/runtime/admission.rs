//! How many requests a master takes in at once: what bounds the core's inbox and its waiters,
//! whatever the transport. A request over budget is refused at once, never queued: a queue
//! would be the unbounded growth this exists to prevent.
//!
//! A permit travels with the request ([`Reply`]) and is given back when the core answers it
//! or drops it, not when the caller stops waiting: a caller that gives up (a client that
//! disconnects) leaves its request in the inbox, and it still counts.

use std::sync::Arc;

use mawex_api::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::messages::Reply;

/// What a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    /// Requests answered as soon as they are decided and committed.
    Request,
    /// Calls that wait for something to happen (`await_result`, `wait_broadcast`).
    Wait,
}

/// The budgets of one master, shared by all its proxies and connectors.
#[derive(Debug)]
pub(crate) struct Admission {
    requests: Arc<Semaphore>,
    waits: Arc<Semaphore>,
    max_requests: usize,
    max_waits: usize,
}

/// Requests in flight at a master, as counted by its budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InFlight {
    /// Requests sent to the master and not answered yet (calls that wait excluded).
    pub requests: usize,
    /// Calls waiting for a result or a broadcast.
    pub waiting: usize,
}

impl Admission {
    /// Budgets of `max_requests` and `max_waits` (both checked by `MasterConfig::validate`).
    pub(crate) fn new(max_requests: usize, max_waits: usize) -> Self {
        Admission {
            requests: Arc::new(Semaphore::new(max_requests)),
            waits: Arc::new(Semaphore::new(max_waits)),
            max_requests,
            max_waits,
        }
    }

    /// A permit of `budget`, or the error that says which budget is spent.
    pub(crate) fn admit(&self, budget: Budget) -> Result<OwnedSemaphorePermit, ApiError> {
        let semaphore = match budget {
            Budget::Request => &self.requests,
            Budget::Wait => &self.waits,
        };
        semaphore.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(match budget {
                Budget::Request => format!(
                    "the master has {} requests in flight (MasterConfig::max_requests_in_flight); \
                     retry shortly",
                    self.max_requests
                ),
                Budget::Wait => format!(
                    "{} calls already wait at the master (MasterConfig::max_waiting_calls); \
                     retry later, or follow a result stream instead",
                    self.max_waits
                ),
            })
        })
    }

    /// The answer channel of a request counted against `budget`.
    pub(crate) fn reply<T>(
        &self,
        budget: Budget,
        tx: tokio::sync::oneshot::Sender<Result<T, ApiError>>,
    ) -> Result<Reply<T>, ApiError> {
        Ok(Reply::counted(tx, self.admit(budget)?))
    }

    /// What is in flight now.
    pub(crate) fn in_flight(&self) -> InFlight {
        InFlight {
            requests: self
                .max_requests
                .saturating_sub(self.requests.available_permits()),
            waiting: self
                .max_waits
                .saturating_sub(self.waits.available_permits()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_once_spent_and_admits_again_when_a_permit_returns() {
        let admission = Admission::new(2, 1);
        let first = admission.admit(Budget::Request).unwrap();
        let _second = admission.admit(Budget::Request).unwrap();
        let refused = admission.admit(Budget::Request).unwrap_err();
        assert!(
            matches!(&refused, ApiError::ResourceExhausted(m) if m.contains("2 requests in flight")),
            "{refused:?}"
        );
        // The other budget is separate.
        let _wait = admission.admit(Budget::Wait).unwrap();
        assert!(matches!(
            admission.admit(Budget::Wait),
            Err(ApiError::ResourceExhausted(m)) if m.contains("1 calls already wait")
        ));
        assert_eq!(
            admission.in_flight(),
            InFlight {
                requests: 2,
                waiting: 1
            }
        );
        drop(first);
        assert!(admission.admit(Budget::Request).is_ok());
    }

    #[test]
    fn a_reply_holds_its_permit_until_it_is_answered() {
        let admission = Admission::new(1, 1);
        let (tx, _rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
        let reply = admission.reply(Budget::Request, tx).unwrap();
        assert!(admission.admit(Budget::Request).is_err());
        let _ = reply.send(Ok(()));
        assert_eq!(admission.in_flight(), InFlight::default());
    }
}

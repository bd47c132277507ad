//! The pieces that decide the master's throughput, one at a time, for micro-benchmarks
//! (`benches/pieces.rs`): a regression in one shows up without the whole pipeline.
//!
//! Each wraps the crate's own code path, so what is measured is what the core thread runs.

use bytes::Bytes;
use mawex_api::pod::{AttemptRef, PodHello, PodMessage};
use mawex_api::{GroupName, PodId, TaskSpec, Timestamp};

use crate::engine::{Engine, Output};
use crate::error::CoreError;
use crate::journal::MAX_RECORD_BYTES;
use crate::runtime::MasterConfig;
use crate::state::{Event, MasterState};

/// An engine with one pod of `slots` and a fixed queue of `prefetch`, as the core thread
/// holds it: submits and results go in, the events a commit would write come out.
#[derive(Debug)]
pub struct EngineBench {
    engine: Engine,
    now: Timestamp,
    session: u64,
    leased: Vec<AttemptRef>,
}

impl EngineBench {
    /// An engine with the default master settings and one connected pod serving `group`.
    ///
    /// # Panics
    /// If the pod's settings are refused (slots or prefetch out of range).
    pub fn new(group: &GroupName, slots: u32, prefetch: u32) -> Self {
        let config = MasterConfig::default();
        let now = Timestamp(1_000_000);
        let mut engine = Engine::new(MasterState::new(), config.engine(), now);
        let mut hello = PodHello::new(
            PodId::new("bench-pod").expect("a valid pod id"),
            vec![group.clone()],
        );
        hello.slots = slots;
        hello.prefetch = prefetch;
        engine
            .pod_hello(1, hello, now, &mut Output::default())
            .expect("the bench pod registers");
        EngineBench {
            engine,
            now,
            session: 1,
            leased: Vec::new(),
        }
    }

    /// Submits `specs`, then dispatches to the pod, as one core turn: returns the events.
    ///
    /// # Errors
    /// What the engine refuses the submit with.
    pub fn submit_and_dispatch(
        &mut self,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<Event>, mawex_api::ApiError> {
        let mut out = Output::default();
        self.engine.submit(specs, self.now, &mut out)?;
        self.engine.dispatch(self.now, &mut out);
        self.collect_leases(&out.events);
        Ok(out.events)
    }

    /// The pod reports every attempt it was leased as succeeded, then the engine dispatches
    /// again, as one core turn: returns the events.
    pub fn finish_leased(&mut self) -> Vec<Event> {
        let mut out = Output::default();
        for attempt in std::mem::take(&mut self.leased) {
            let finished = PodMessage::Finished {
                attempt,
                outcome: Ok(Bytes::new()),
            };
            self.engine
                .pod_message(self.session, finished, self.now, &mut out);
        }
        self.engine.dispatch(self.now, &mut out);
        self.collect_leases(&out.events);
        out.events
    }

    fn collect_leases(&mut self, events: &[Event]) {
        self.leased.extend(events.iter().filter_map(|e| match e {
            Event::TaskAssigned { attempt, .. } => Some(AttemptRef::from(*attempt)),
            _ => None,
        }));
    }

    /// The engine's state.
    pub fn state(&self) -> &MasterState {
        self.engine.state()
    }
}

/// Encodes `events`, numbered from `first_seq`, into journal records of the size the
/// journal writes.
///
/// # Errors
/// [`CoreError::Encode`] if an event does not encode.
pub fn encode_records(first_seq: u64, events: &[Event]) -> Result<Vec<Vec<u8>>, CoreError> {
    Ok(
        crate::codec::encode_records(first_seq, events, MAX_RECORD_BYTES)?
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect(),
    )
}

/// Decodes one journal record (stored under `seq`) into its events.
///
/// # Errors
/// [`CoreError::CorruptJournal`] or [`CoreError::UnreadableJournal`] for bytes that do not
/// decode.
pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<Vec<Event>, CoreError> {
    crate::codec::decode_record(bytes).map_err(|e| match e {
        crate::codec::DecodeError::Damaged(reason) => CoreError::CorruptJournal { seq, reason },
        crate::codec::DecodeError::Unreadable(reason) => {
            CoreError::UnreadableJournal { seq, reason }
        }
    })
}

/// Encodes a snapshot of `state` after event `last_seq`.
///
/// # Errors
/// [`CoreError::Encode`] if the state does not encode.
pub fn encode_snapshot(last_seq: u64, state: &MasterState) -> Result<Vec<u8>, CoreError> {
    crate::codec::encode_snapshot(last_seq, state)
}

/// Decodes a snapshot, its indexes built as a restart builds them (while the tasks are
/// decoded, or after, for a format older than 6).
///
/// # Errors
/// [`CoreError::CorruptSnapshot`] for bytes that do not decode.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, MasterState), CoreError> {
    crate::journal::decode_snapshot(bytes)
}

//! Live output of the attempts a pod runs: each attempt's lines wait in a bounded buffer
//! (the oldest dropped past it, so a handler that prints without pause never waits), and go
//! to the master every [`OUTPUT_EVERY`] and before the attempt's result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mawex_api::pod::{AttemptRef, PodMessage};
use mawex_api::{OutputLine, OutputStream, MAX_OUTPUT_LINES_PER_MESSAGE};
use mawex_sandbox::LogHandle;

use crate::shared::lock;

/// How often waiting lines are sent.
pub(crate) const OUTPUT_EVERY: Duration = Duration::from_millis(200);

/// The most line bytes one message carries.
const MESSAGE_BYTES: usize = 32 * 1024;

/// The lines of one attempt not sent yet.
#[derive(Default)]
struct Pending {
    /// The number of the last line written.
    last_seq: u64,
    lines: VecDeque<OutputLine>,
    bytes: usize,
}

/// The waiting lines of every attempt the pod runs.
pub(crate) struct Outputs {
    /// Line bytes kept per attempt while they wait.
    tail_bytes: usize,
    attempts: Mutex<HashMap<AttemptRef, Pending>>,
}

impl Outputs {
    pub(crate) fn new(tail_bytes: usize) -> Arc<Self> {
        Arc::new(Outputs {
            tail_bytes,
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// A handle that writes attempt `r`'s lines here, until [`Outputs::finish`].
    pub(crate) fn handle(self: &Arc<Self>, r: AttemptRef) -> LogHandle {
        lock(&self.attempts).insert(r, Pending::default());
        let outputs = Arc::downgrade(self);
        LogHandle::new(move |stream, text| {
            if let Some(outputs) = outputs.upgrade() {
                outputs.push(r, stream, text);
            }
        })
    }

    fn push(&self, r: AttemptRef, stream: OutputStream, text: &str) {
        let mut attempts = lock(&self.attempts);
        // Gone: the attempt ended (a child's last lines after its result are dropped).
        let Some(pending) = attempts.get_mut(&r) else {
            return;
        };
        pending.last_seq = pending.last_seq.saturating_add(1);
        let line = OutputLine::new(pending.last_seq, stream, text);
        pending.bytes = pending.bytes.saturating_add(line.size());
        pending.lines.push_back(line);
        while pending.bytes > self.tail_bytes && pending.lines.len() > 1 {
            if let Some(old) = pending.lines.pop_front() {
                pending.bytes = pending.bytes.saturating_sub(old.size());
            }
        }
    }

    /// The waiting lines of every attempt, as messages (each within its bounds).
    pub(crate) fn take(&self) -> Vec<PodMessage> {
        let mut attempts = lock(&self.attempts);
        let mut messages = Vec::new();
        for (r, pending) in attempts.iter_mut() {
            messages.extend(drain(*r, pending));
        }
        messages
    }

    /// Attempt `r`'s last lines, as messages, and forgets it: its result follows them.
    pub(crate) fn finish(&self, r: AttemptRef) -> Vec<PodMessage> {
        match lock(&self.attempts).remove(&r) {
            Some(mut pending) => drain(r, &mut pending),
            None => Vec::new(),
        }
    }
}

fn drain(r: AttemptRef, pending: &mut Pending) -> Vec<PodMessage> {
    let mut messages = Vec::new();
    while !pending.lines.is_empty() {
        let mut lines = Vec::new();
        let mut bytes = 0;
        while let Some(line) = pending.lines.front() {
            let full = lines.len() >= MAX_OUTPUT_LINES_PER_MESSAGE
                || (!lines.is_empty() && bytes + line.size() > MESSAGE_BYTES);
            if full {
                break;
            }
            bytes += line.size();
            if let Some(line) = pending.lines.pop_front() {
                lines.push(line);
            }
        }
        messages.push(PodMessage::Output { attempt: r, lines });
    }
    pending.bytes = 0;
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use mawex_api::{Attempt, TaskId};

    fn lines_of(messages: &[PodMessage]) -> Vec<u64> {
        messages
            .iter()
            .flat_map(|m| match m {
                PodMessage::Output { lines, .. } => lines.iter().map(|l| l.seq).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_busy_attempt_keeps_its_last_lines_and_numbers_every_one() {
        let outputs = Outputs::new(1000);
        let r = AttemptRef {
            task: TaskId::new(),
            attempt: Attempt(1),
        };
        let log = outputs.handle(r);
        for i in 0..10_000 {
            log.line(&format!("line {i}"));
        }
        let sent = lines_of(&outputs.take());
        assert!(sent.len() < 100, "bounded: {} lines", sent.len());
        assert_eq!(sent.last(), Some(&10_000), "the last line is kept");
        log.line("after");
        assert_eq!(lines_of(&outputs.finish(r)), vec![10_001]);
        log.line("too late");
        assert!(
            outputs.take().is_empty(),
            "an ended attempt takes no more lines"
        );
    }

    #[test]
    fn a_long_wait_goes_in_messages_within_their_bounds() {
        let outputs = Outputs::new(1 << 20);
        let r = AttemptRef {
            task: TaskId::new(),
            attempt: Attempt(1),
        };
        let log = outputs.handle(r);
        for _ in 0..3000 {
            log.line("x");
        }
        let messages = outputs.take();
        assert!(messages.len() >= 3);
        for m in &messages {
            let PodMessage::Output { lines, .. } = m else {
                panic!("an output message")
            };
            assert!(lines.len() <= MAX_OUTPUT_LINES_PER_MESSAGE);
        }
        assert_eq!(lines_of(&messages).len(), 3000);
    }
}

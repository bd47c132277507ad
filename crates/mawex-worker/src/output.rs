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

/// The most line bytes the pod sends a tick, all attempts together: what does not go waits
/// in its buffer (whose oldest lines give way), so a pod's output is bounded in rate too.
const TICK_BYTES: usize = 256 * 1024;

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

    /// Sends a tick's share of the waiting lines through `send`: a message per attempt at
    /// most, [`TICK_BYTES`] in all. Sent under the buffers' lock, so that a tick's lines can
    /// never pass an attempt's last lines (and its result) on the way.
    pub(crate) fn send_tick(&self, mut send: impl FnMut(PodMessage)) {
        let mut attempts = lock(&self.attempts);
        let mut budget = TICK_BYTES;
        for (r, pending) in attempts.iter_mut() {
            if budget == 0 {
                break;
            }
            if let Some((message, bytes)) = one_message(*r, pending, budget.min(MESSAGE_BYTES)) {
                budget = budget.saturating_sub(bytes);
                send(message);
            }
        }
    }

    /// Sends attempt `r`'s last lines through `send` and forgets it: its result follows them.
    pub(crate) fn finish(&self, r: AttemptRef, mut send: impl FnMut(PodMessage)) {
        let mut attempts = lock(&self.attempts);
        if let Some(mut pending) = attempts.remove(&r) {
            while let Some((message, _)) = one_message(r, &mut pending, MESSAGE_BYTES) {
                send(message);
            }
        }
    }
}

/// A message of `r`'s oldest waiting lines, of at most `budget` bytes (and at least one
/// line), with its bytes; `None` if none wait.
fn one_message(r: AttemptRef, pending: &mut Pending, budget: usize) -> Option<(PodMessage, usize)> {
    let mut lines = Vec::new();
    let mut bytes = 0;
    while let Some(line) = pending.lines.front() {
        let full = lines.len() >= MAX_OUTPUT_LINES_PER_MESSAGE
            || (!lines.is_empty() && bytes + line.size() > budget);
        if full {
            break;
        }
        bytes += line.size();
        if let Some(line) = pending.lines.pop_front() {
            lines.push(line);
        }
    }
    pending.bytes = pending.bytes.saturating_sub(bytes);
    (!lines.is_empty()).then_some((PodMessage::Output { attempt: r, lines }, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mawex_api::{Attempt, TaskId};

    fn take(outputs: &Outputs) -> Vec<PodMessage> {
        let mut messages = Vec::new();
        outputs.send_tick(|m| messages.push(m));
        messages
    }

    fn finish(outputs: &Outputs, r: AttemptRef) -> Vec<PodMessage> {
        let mut messages = Vec::new();
        outputs.finish(r, |m| messages.push(m));
        messages
    }

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
        let sent = lines_of(&take(&outputs));
        assert!(sent.len() < 100, "bounded: {} lines", sent.len());
        assert_eq!(sent.last(), Some(&10_000), "the last line is kept");
        log.line("after");
        assert_eq!(lines_of(&finish(&outputs, r)), vec![10_001]);
        log.line("too late");
        assert!(
            take(&outputs).is_empty(),
            "an ended attempt takes no more lines"
        );
    }

    #[test]
    fn a_tick_sends_one_message_an_attempt_and_the_rest_waits() {
        let outputs = Outputs::new(1 << 20);
        let r = AttemptRef {
            task: TaskId::new(),
            attempt: Attempt(1),
        };
        let log = outputs.handle(r);
        for _ in 0..3000 {
            log.line("x");
        }
        let first = take(&outputs);
        assert_eq!(first.len(), 1, "one message a tick for an attempt");
        let mut sent = lines_of(&first);
        assert!(sent.len() <= MAX_OUTPUT_LINES_PER_MESSAGE);
        sent.extend(lines_of(&finish(&outputs, r)));
        assert_eq!(
            sent,
            (1..=3000).collect::<Vec<u64>>(),
            "in order, none lost or repeated"
        );
    }
}

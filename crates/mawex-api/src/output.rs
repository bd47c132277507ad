//! Live output: the lines an attempt prints (a child process's stdout and stderr) or logs (an
//! in-process handler), streamed from its pod to the master while it runs. The master keeps
//! the last lines of each task's latest attempt, bounded, and never journals them: they are
//! for people watching, not for decisions.

use serde::{Deserialize, Serialize};

use crate::ids::{Attempt, TaskId};

/// The longest line kept, in bytes; a longer one is cut (at a character boundary).
pub const MAX_OUTPUT_LINE_BYTES: usize = 4096;

/// The most lines one output message carries.
pub const MAX_OUTPUT_LINES_PER_MESSAGE: usize = 1000;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OutputStream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// What an in-process handler logged (`TaskInput::log`).
    Log,
}

impl OutputStream {
    /// Its name: `stdout`, `stderr` or `log`.
    pub fn name(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
            _ => "log",
        }
    }
}

/// One line of an attempt's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutputLine {
    /// Its number within the attempt, from 1. A gap means lines were dropped (the pod's or
    /// the master's bound).
    pub seq: u64,
    /// Where it came from.
    pub stream: OutputStream,
    /// The text, without its line break, at most [`MAX_OUTPUT_LINE_BYTES`].
    pub text: String,
}

impl OutputLine {
    /// Line `seq` of `stream`, cut to [`MAX_OUTPUT_LINE_BYTES`].
    pub fn new(seq: u64, stream: OutputStream, text: impl Into<String>) -> Self {
        let mut text = text.into();
        cut(&mut text, MAX_OUTPUT_LINE_BYTES);
        OutputLine { seq, stream, text }
    }

    /// The bytes it counts against a bound: its text and what holding it costs (the line
    /// itself and its allocation), so that many short lines count what they take.
    pub fn size(&self) -> usize {
        self.text.len() + std::mem::size_of::<OutputLine>() + 16
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

/// What a master has of a task's latest attempt's output, after a given line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskOutput {
    /// The task.
    pub task: TaskId,
    /// The attempt these lines are of (the latest one that printed anything; 0: none yet).
    pub attempt: Attempt,
    /// The lines after the one asked for, oldest first.
    pub lines: Vec<OutputLine>,
    /// Lines after the one asked for that are gone (beyond the bound kept) before the first
    /// of `lines`.
    pub dropped: u64,
    /// The attempt ended: no line of it will follow.
    pub ended: bool,
    /// The task finished: no attempt will follow.
    pub finished: bool,
}

impl TaskOutput {
    /// Output of `attempt` of `task`.
    pub fn new(task: TaskId, attempt: Attempt) -> Self {
        TaskOutput {
            task,
            attempt,
            lines: Vec::new(),
            dropped: 0,
            ended: false,
            finished: false,
        }
    }

    /// The number of the last line given, or `after` if none.
    pub fn last_seq(&self, after: u64) -> u64 {
        self.lines.last().map_or(after, |l| l.seq)
    }
}

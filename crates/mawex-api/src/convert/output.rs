//! Live output.

use crate::convert::task_id;
use crate::error::ApiError;
use crate::ids::Attempt;
use crate::output::{OutputLine, OutputStream, TaskOutput};
use crate::proto;

#[doc(hidden)]
impl From<OutputLine> for proto::OutputLine {
    fn from(l: OutputLine) -> Self {
        let stream = match l.stream {
            OutputStream::Stdout => proto::OutputStream::Stdout,
            OutputStream::Stderr => proto::OutputStream::Stderr,
            _ => proto::OutputStream::Log,
        };
        proto::OutputLine {
            seq: l.seq,
            stream: stream as i32,
            text: l.text,
        }
    }
}

/// A line from the wire: an unknown stream reads as a log line, and a text too long is cut
/// (it is shown, never decided on).
#[doc(hidden)]
impl From<proto::OutputLine> for OutputLine {
    fn from(l: proto::OutputLine) -> Self {
        let stream = match proto::OutputStream::try_from(l.stream) {
            Ok(proto::OutputStream::Stdout) => OutputStream::Stdout,
            Ok(proto::OutputStream::Stderr) => OutputStream::Stderr,
            _ => OutputStream::Log,
        };
        OutputLine::new(l.seq, stream, l.text)
    }
}

#[doc(hidden)]
impl From<TaskOutput> for proto::TaskOutput {
    fn from(o: TaskOutput) -> Self {
        proto::TaskOutput {
            task: o.task.to_string(),
            attempt: o.attempt.0,
            lines: o.lines.into_iter().map(Into::into).collect(),
            dropped: o.dropped,
            ended: o.ended,
            finished: o.finished,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::TaskOutput> for TaskOutput {
    type Error = ApiError;

    fn try_from(o: proto::TaskOutput) -> Result<Self, ApiError> {
        let mut output = TaskOutput::new(task_id("output.task", &o.task)?, Attempt(o.attempt));
        output.lines = o.lines.into_iter().map(Into::into).collect();
        output.dropped = o.dropped;
        output.ended = o.ended;
        output.finished = o.finished;
        Ok(output)
    }
}

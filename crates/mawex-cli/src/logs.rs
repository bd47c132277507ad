//! `mawex logs`: a task's live output, and with `--follow` until it finishes.

use std::io::Write;
use std::time::Duration;

use mawex::{Attempt, MasterProxy, OutputLine, TaskId};
use serde::Serialize;

use crate::cli::Output;
use crate::config::Config;
use crate::output::Rows;
use crate::tasks::connect;
use crate::CliError;

/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// A line as `-o json` prints it.
#[derive(Debug, Serialize)]
struct LineRow {
    attempt: u32,
    seq: u64,
    stream: &'static str,
    text: String,
}

impl Rows for LineRow {
    fn headers() -> &'static [&'static str] {
        &["attempt", "seq", "stream", "text"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.attempt.to_string(),
            self.seq.to_string(),
            self.stream.to_owned(),
            self.text.clone(),
        ]
    }
}

/// Prints `lines`: as text (each line as printed) in a table's place, else as JSON lines.
/// False once nobody reads stdout any more (`| head`): following stops then.
fn print(output: Output, attempt: Attempt, lines: &[OutputLine]) -> Result<bool, CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = lines
        .iter()
        .try_for_each(|l| match output {
            Output::Table => writeln!(out, "{}", l.text),
            _ => {
                let row = LineRow {
                    attempt: attempt.0,
                    seq: l.seq,
                    stream: l.stream.name(),
                    text: l.text.clone(),
                };
                serde_json::to_writer(&mut out, &row)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
            }
        })
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        written => written
            .map(|()| true)
            .map_err(CliError::io("writing to stdout")),
    }
}

/// Lines missing between `after` and the lines read (the master's bound at the start, the
/// pod's between lines).
fn gaps(after: u64, dropped: u64, lines: &[OutputLine]) -> u64 {
    let mut missing = dropped;
    let mut last = after.saturating_add(dropped);
    for line in lines {
        missing = missing.saturating_add(line.seq.saturating_sub(last).saturating_sub(1));
        last = line.seq;
    }
    missing
}

/// `mawex logs [--follow] ID`.
///
/// # Errors
/// A bad id, an unknown task, or a failed call.
pub(crate) async fn logs(
    config: &Config,
    output: Output,
    id: &str,
    follow: bool,
) -> Result<(), CliError> {
    let id: TaskId = id
        .parse()
        .map_err(|e: mawex::ApiError| CliError::Usage(format!("task id: {e}")))?;
    let proxy = connect(config)?;
    let mut attempt = Attempt(0);
    let mut after = 0;
    loop {
        let read = proxy.task_output(id, after).await?;
        // Attempt 0 after a later one: a master that kept nothing (restarted, or a new
        // leader); what was printed stays printed.
        if read.attempt != attempt && read.attempt.0 > 0 {
            if attempt.0 > 0 {
                eprintln!("-- attempt {} --", read.attempt.0);
            }
            // Line numbers are the attempt's own: a read after a line of the last attempt
            // is read again from the new one's start.
            let stale = after > 0;
            (attempt, after) = (read.attempt, 0);
            if stale {
                continue;
            }
        }
        if read.attempt == attempt {
            let missing = gaps(after, read.dropped, &read.lines);
            if missing > 0 {
                eprintln!("-- {missing} lines dropped --");
            }
            if !print(output, read.attempt, &read.lines)? {
                return Ok(());
            }
            after = read.last_seq(after);
        }
        if !follow || (read.finished && read.ended) {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

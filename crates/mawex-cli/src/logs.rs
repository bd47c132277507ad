//! `mawex logs`: a task's live output, and with `--follow` until it finishes.

use std::io::Write;
use std::time::Duration;

use mawex::{Attempt, MasterProxy, OutputLine, TaskId};
use serde::Serialize;

use crate::cli::Output;
use crate::config::Config;
use crate::output::{self, Rows};
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

/// Prints `lines`: as text (each line as printed) in a table's place, else as rows.
fn print(output: Output, attempt: Attempt, lines: &[OutputLine]) -> Result<(), CliError> {
    if lines.is_empty() {
        return Ok(());
    }
    if output == Output::Table {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let written = lines
            .iter()
            .try_for_each(|l| writeln!(out, "{}", l.text))
            .and_then(|()| out.flush());
        return match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            written => written.map_err(CliError::io("writing to stdout")),
        };
    }
    let rows: Vec<LineRow> = lines
        .iter()
        .map(|l| LineRow {
            attempt: attempt.0,
            seq: l.seq,
            stream: l.stream.name(),
            text: l.text.clone(),
        })
        .collect();
    output::print(output, &rows)
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
        if read.attempt != attempt {
            if attempt.0 > 0 {
                eprintln!("-- attempt {} --", read.attempt.0);
            }
            // Line numbers are the attempt's own: read the new one from its start.
            (attempt, after) = (read.attempt, 0);
            if read.attempt.0 > 0 {
                continue;
            }
        }
        if read.dropped > 0 {
            eprintln!("-- {} lines dropped --", read.dropped);
        }
        print(output, read.attempt, &read.lines)?;
        after = read.last_seq(after);
        if !follow || (read.finished && read.ended) {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

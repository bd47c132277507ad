//! What read commands print: rows as a table, one JSON document, or JSON lines. Data goes to
//! stdout, everything else (logs, prompts, progress) to stderr.

use std::io::Write;

use mawex::{Outcome, TaskView, Timestamp};
use serde::Serialize;

use crate::cli::Output;
use crate::CliError;

/// Something printed as rows: its columns, and each row's cells.
pub trait Rows: Serialize {
    /// The column headers of the table.
    fn headers() -> &'static [&'static str];
    /// The cells of this row, in the order of the headers.
    fn cells(&self) -> Vec<String>;
}

/// Prints `rows` as `output` says.
///
/// # Errors
/// stdout cannot be written.
pub fn print<R: Rows>(output: Output, rows: &[R]) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match output {
        Output::Table => {
            let mut table = comfy_table::Table::new();
            table
                .load_preset(comfy_table::presets::NOTHING)
                .set_header(R::headers().iter().map(|h| h.to_uppercase()));
            for row in rows {
                table.add_row(row.cells());
            }
            writeln!(out, "{}", table.trim_fmt())
        }
        Output::Json => serde_json::to_writer_pretty(&mut out, rows)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Output::Jsonl => rows.iter().try_for_each(|row| {
            serde_json::to_writer(&mut out, row)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
        }),
    };
    match written {
        // A reader that stopped reading (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.map_err(CliError::io("writing to stdout")),
    }
}

/// Bytes as text if they are UTF-8, else as `{"base64": …}`: as the REST API has them.
pub use mawex_web::Body;

/// A short form of `body` for a table cell.
fn cell(body: &Body) -> String {
    let text = match body {
        Body::Text(text) => text.replace('\n', "⏎"),
        Body::Binary { base64 } => format!("base64:{base64}"),
    };
    shorten(&text, 40)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// A time as RFC 3339 (UTC, milliseconds); one past year 9999 (from a bad clock or a bad
/// message) as its milliseconds since the epoch.
pub fn time(t: Timestamp) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_millis(t.into())) {
        Ok(()) => text,
        Err(_) => format!("{}ms", t.as_millis()),
    }
}

/// Prints `text` and a newline on stdout; a reader that stopped reading is not an error.
///
/// # Errors
/// stdout cannot be written.
pub fn line(text: impl std::fmt::Display) -> Result<(), CliError> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.map_err(CliError::io("writing to stdout")),
    }
}

/// A task as `get` and `list` print it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// Its id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its handler.
    pub handler: String,
    /// Its state.
    pub state: String,
    /// The current or last attempt.
    pub attempt: u32,
    /// The pod running it.
    pub pod: Option<String>,
    /// When it was accepted.
    pub submitted_at: String,
    /// When the current or last attempt started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Its payload.
    pub payload: Body,
    /// Its output, once it succeeded.
    pub output: Option<Body>,
    /// Its last error, once it failed (`kind: message`).
    pub error: Option<String>,
    /// Its priority.
    pub priority: i32,
}

impl TaskRow {
    /// The row of `view`.
    pub fn new(view: &TaskView) -> TaskRow {
        let (output, error) = match view.result.as_ref().map(|r| &r.outcome) {
            Some(Outcome::Succeeded(out)) => (Some(Body::new(out)), None),
            Some(Outcome::Failed(e)) => (None, Some(format!("{}: {}", e.kind.name(), e.message))),
            _ => (None, None),
        };
        TaskRow {
            id: view.spec.id.to_string(),
            group: view.spec.group.to_string(),
            handler: view.spec.handler.clone(),
            state: view.state.name().to_owned(),
            attempt: view.attempt.0,
            pod: view.pod.as_ref().map(ToString::to_string),
            submitted_at: time(view.submitted_at),
            started_at: view.started_at.map(time),
            finished_at: view.result.as_ref().map(|r| time(r.finished_at)),
            payload: Body::new(&view.spec.payload),
            output,
            error,
            priority: view.spec.priority,
        }
    }
}

impl Rows for TaskRow {
    fn headers() -> &'static [&'static str] {
        &[
            "id",
            "group",
            "handler",
            "state",
            "attempt",
            "pod",
            "submitted",
            "result",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let result = match (&self.output, &self.error) {
            (Some(out), _) => cell(out),
            (None, Some(error)) => shorten(error, 40),
            (None, None) => String::new(),
        };
        vec![
            self.id.clone(),
            self.group.clone(),
            self.handler.clone(),
            self.state.clone(),
            self.attempt.to_string(),
            self.pod.clone().unwrap_or_default(),
            self.submitted_at.clone(),
            result,
        ]
    }
}

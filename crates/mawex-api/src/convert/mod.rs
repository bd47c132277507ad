//! The one place where protobuf messages and domain types meet.
//!
//! Domain → protobuf is infallible (`From`); protobuf → domain validates (`TryFrom`, with an
//! `ApiError::InvalidArgument` naming the field), because it is where hostile or malformed
//! input from the network enters.

mod admin;
mod broadcast;
mod graph;
mod output;
mod pod;
mod proxy;
mod status;
mod task;

pub use admin::{parse_update_pending, update_pending_request};
pub use graph::{compact_view, graph_id};
pub use pod::{MasterFrame, PodFrame};
pub(crate) use task::task_state;

use crate::error::ApiError;
use crate::ids::TaskId;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(message.into())
}

/// Parses a task id field named `field` (for the error message).
///
/// # Errors
/// `InvalidArgument` for an empty, malformed or nil id.
pub fn task_id(field: &str, text: &str) -> Result<TaskId, ApiError> {
    if text.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    text.parse()
        .map_err(|e: ApiError| invalid(format!("{field}: {}", message_of(e))))
}

/// A required sub-message named `field`.
///
/// # Errors
/// `InvalidArgument` when it is absent.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| invalid(format!("{field} is required")))
}

fn message_of(e: ApiError) -> String {
    match e {
        ApiError::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

/// Prefixes the message of an invalid-argument error with the field it concerns.
/// Whole milliseconds, saturating.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn in_field(field: &str) -> impl Fn(ApiError) -> ApiError + '_ {
    move |e| match e {
        ApiError::InvalidArgument(m) => invalid(format!("{field}: {m}")),
        other => other,
    }
}

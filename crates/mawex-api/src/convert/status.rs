//! `ApiError` ↔ `tonic::Status`: the one mapping both ends use.

use tonic::{Code, Status};

use crate::error::ApiError;

/// Metadata key carrying the task id of a `NotFound`, so the client can rebuild the error.
const TASK_ID_KEY: &str = "mawex-task-id";

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(id) => {
                let mut status = Status::not_found(format!("task {id} not found"));
                if let Ok(value) = id.to_string().parse() {
                    status.metadata_mut().insert(TASK_ID_KEY, value);
                }
                status
            }
            ApiError::Conflict(m) => Status::already_exists(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        let message = status.message().to_owned();
        // A status with a source was made on this side from a failed connection (not sent by
        // the master): the request may or may not have arrived, and retrying is the answer.
        if std::error::Error::source(&status).is_some()
            && matches!(status.code(), Code::Unknown | Code::Internal)
        {
            let cause = std::error::Error::source(&status)
                .map(|s| s.to_string())
                .unwrap_or_default();
            return ApiError::Unavailable(format!("{message}: {cause}"));
        }
        match status.code() {
            Code::InvalidArgument => ApiError::InvalidArgument(message),
            // tonic's answer to a message over the size limit.
            Code::OutOfRange => ApiError::ResourceExhausted(message),
            Code::NotFound => {
                let id = status
                    .metadata()
                    .get(TASK_ID_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse().ok());
                match id {
                    Some(id) => ApiError::NotFound(id),
                    None => ApiError::Internal(format!("not found: {message}")),
                }
            }
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                ApiError::Conflict(message)
            }
            Code::ResourceExhausted => ApiError::ResourceExhausted(message),
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
                ApiError::Unavailable(message)
            }
            _ => ApiError::Internal(format!("{:?}: {message}", status.code())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskId;

    #[test]
    fn errors_survive_the_round_trip() {
        let id = TaskId::new();
        for e in [
            ApiError::InvalidArgument("bad".into()),
            ApiError::NotFound(id),
            ApiError::Conflict("taken".into()),
            ApiError::ResourceExhausted("big".into()),
            ApiError::Unavailable("down".into()),
        ] {
            assert_eq!(ApiError::from(Status::from(e.clone())), e);
        }
    }
}

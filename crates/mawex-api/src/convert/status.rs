//! `ApiError` ↔ `tonic::Status`: the one mapping both ends use.

use tonic::{Code, Status};

use crate::error::ApiError;

/// The metadata key of a `NotLeader` answer: the leader's address, or empty if unknown.
const LEADER_KEY: &str = "mawex-leader";

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(what) => Status::not_found(what),
            ApiError::Conflict(m) => Status::already_exists(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::NotLeader { leader } => {
                let mut status = Status::unavailable(crate::error::not_leader(leader.as_deref()));
                // Empty when no leader is known; an address that is not valid metadata
                // (never one a node was given) goes as unknown.
                let value = leader
                    .as_deref()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static(""));
                status.metadata_mut().insert(LEADER_KEY, value);
                status
            }
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::Unimplemented(m) => Status::unimplemented(m),
            ApiError::Internal(m) => Status::internal(m),
            // Made by typed helpers on the caller's side; a server that passes one on (a
            // proxy of proxies) sends it as a precondition that failed.
            ApiError::TaskFailed(e) => Status::failed_precondition(format!("task failed: {e}")),
            ApiError::Decode(m) => Status::data_loss(m),
        }
    }
}

/// Why a TLS handshake failed, if that is what `status` (made on this side from a failed
/// connection) comes from: an unknown authority, an expired or refused certificate, a
/// certificate the master requires and this side did not present.
fn tls_failure(status: &Status) -> Option<String> {
    use tokio_rustls::rustls;
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // tokio-rustls hands rustls errors on inside an `io::Error`.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(tls) = inner {
            return Some(tls.to_string());
        }
        next = e.source();
    }
    None
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        let message = status.message().to_owned();
        // Retrying a handshake that failed gets the same answer: say why at once.
        if let Some(reason) = tls_failure(&status) {
            return ApiError::Unauthenticated(format!("the TLS handshake failed: {reason}"));
        }
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
            Code::NotFound => ApiError::NotFound(message),
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                ApiError::Conflict(message)
            }
            Code::ResourceExhausted => ApiError::ResourceExhausted(message),
            Code::Unauthenticated => ApiError::Unauthenticated(message),
            Code::PermissionDenied => ApiError::PermissionDenied(message),
            Code::Unimplemented => ApiError::Unimplemented(message),
            Code::DataLoss => ApiError::Decode(message),
            Code::Unavailable if status.metadata().contains_key(LEADER_KEY) => {
                let leader = status
                    .metadata()
                    .get(LEADER_KEY)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned);
                ApiError::NotLeader { leader }
            }
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
            ApiError::task_not_found(id),
            ApiError::Conflict("taken".into()),
            ApiError::ResourceExhausted("big".into()),
            ApiError::Unavailable("down".into()),
            ApiError::Unauthenticated("who are you".into()),
            ApiError::PermissionDenied("not yours".into()),
            ApiError::Unimplemented("not here".into()),
            ApiError::Decode("output: width: invalid type".into()),
            ApiError::NotLeader {
                leader: Some("10.0.0.2:7070".into()),
            },
            ApiError::NotLeader { leader: None },
        ] {
            assert_eq!(ApiError::from(Status::from(e.clone())), e);
        }
    }
}

//! The one error type of the web side, and how each error answers: its status and a JSON
//! body `{"error": {"code": …, "message": …}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mawex_api::ApiError;
use serde::Serialize;
use utoipa::ToSchema;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The master answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The request is malformed: a body that is not the JSON expected, a bad id or filter.
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than `WebConfig::max_body_bytes`.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorAnswer {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable name: `invalid_argument`, `not_found`, `conflict`, `too_large`,
    /// `resource_exhausted`, `unavailable`, `not_leader`, `unauthenticated`,
    /// `permission_denied`, `unimplemented`, `internal`.
    pub code: &'static str,
    /// For people: what, and why.
    pub message: String,
    /// With `not_leader`: the address of the master that leads, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl WebError {
    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        use StatusCode as S;
        match self {
            WebError::BadRequest(_) => (S::BAD_REQUEST, "invalid_argument", None),
            WebError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "too_large", None),
            WebError::Api(e) => match e {
                ApiError::InvalidArgument(_) => (S::BAD_REQUEST, "invalid_argument", None),
                ApiError::NotFound(_) => (S::NOT_FOUND, "not_found", None),
                ApiError::Conflict(_) => (S::CONFLICT, "conflict", None),
                ApiError::ResourceExhausted(_) => {
                    (S::TOO_MANY_REQUESTS, "resource_exhausted", None)
                }
                ApiError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable", None),
                ApiError::NotLeader { leader } => {
                    (S::SERVICE_UNAVAILABLE, "not_leader", leader.clone())
                }
                ApiError::Unauthenticated(_) => (S::UNAUTHORIZED, "unauthenticated", None),
                ApiError::PermissionDenied(_) => (S::FORBIDDEN, "permission_denied", None),
                ApiError::Unimplemented(_) => (S::NOT_IMPLEMENTED, "unimplemented", None),
                _ => (S::INTERNAL_SERVER_ERROR, "internal", None),
            },
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, code, leader) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, "a web request failed");
        }
        let answer = ErrorAnswer {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                leader,
            },
        };
        (status, axum::Json(answer)).into_response()
    }
}

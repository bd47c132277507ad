//! Who may call what: every route has a rule (a route without one is refused), checked
//! against the caller's bearer token by [`WebConfig::auth`](crate::WebConfig::auth). The
//! roles are the gRPC server's: a `client` submits, reads and cancels tasks; an `admin`
//! does everything; a `viewer` reads everything and changes nothing, enforced here, not by
//! hidden buttons. Every change is written to the audit log (`mawex::audit`).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{AppState, WebError};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebRole {
    /// Reads everything, changes nothing.
    Viewer,
    /// Submits, reads and cancels tasks.
    Client,
    /// Everything.
    Admin,
}

/// A caller, as the authenticator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebUser {
    /// Its id (for the audit log; never the secret).
    pub id: String,
    /// What it may do.
    pub role: WebRole,
}

/// Finds the caller a bearer secret stands for (`None`: not a valid token for the web).
pub type Authenticator = Arc<dyn Fn(&str) -> Option<WebUser> + Send + Sync>;

/// The role a route needs besides reading (`Read` routes are open to viewers too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Reads what a client may read: a viewer, a client or an admin.
    ClientRead,
    /// Reads what only an admin may read among writers: a viewer or an admin.
    AdminRead,
    /// Changes tasks: a client or an admin.
    ClientWrite,
    /// Changes anything else: an admin.
    AdminWrite,
}

/// The rule of a route (by method and matched path), or `None` for a route without one.
pub(crate) fn needs(method: &Method, path: &str) -> Option<Needs> {
    use Needs::*;
    let read = method == Method::GET;
    Some(match (read, path) {
        (true, "/api/v1/tasks" | "/api/v1/tasks/{id}") => ClientRead,
        (false, "/api/v1/tasks" | "/api/v1/tasks/batch" | "/api/v1/tasks/{id}/cancel") => {
            ClientWrite
        }
        (
            true,
            "/api/v1/failed"
            | "/api/v1/groups"
            | "/api/v1/groups/{group}"
            | "/api/v1/pods"
            | "/api/v1/schedules"
            | "/api/v1/broadcasts"
            | "/api/v1/broadcasts/{id}"
            | "/metrics",
        ) => AdminRead,
        (
            false,
            "/api/v1/tasks/{id}/retry"
            | "/api/v1/failed/retry"
            | "/api/v1/failed/purge"
            | "/api/v1/groups/{group}"
            | "/api/v1/pods/{id}/drain"
            | "/api/v1/schedules"
            | "/api/v1/schedules/{name}"
            | "/api/v1/schedules/{name}/pause"
            | "/api/v1/schedules/{name}/resume"
            | "/api/v1/broadcasts",
        ) => AdminWrite,
        _ => return None,
    })
}

fn allows(role: WebRole, needs: Needs) -> bool {
    matches!(
        (role, needs),
        (WebRole::Admin, _)
            | (WebRole::Viewer, Needs::ClientRead | Needs::AdminRead)
            | (WebRole::Client, Needs::ClientRead | Needs::ClientWrite)
    )
}

fn role_name(role: WebRole) -> &'static str {
    match role {
        WebRole::Viewer => "viewer",
        WebRole::Client => "client",
        WebRole::Admin => "admin",
    }
}

/// Checks the caller of `request` against its route's rule, when tokens are required, and
/// writes every change to the audit log.
pub(crate) async fn guard(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = matched.as_ref().map_or("", MatchedPath::as_str).to_owned();
    let Some(auth) = &app.auth else {
        return next.run(request).await;
    };
    // The API's description holds no data; an unknown path answers 404 after this.
    if path == "/api/openapi.json" || path.is_empty() {
        return next.run(request).await;
    }
    let Some(needs) = needs(&method, &path) else {
        return WebError::Api(mawex_api::ApiError::PermissionDenied(format!(
            "{method} {path} has no access rule"
        )))
        .into_response();
    };
    let secret = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(secret) = secret else {
        return WebError::Api(mawex_api::ApiError::Unauthenticated(
            "a token is required: send `Authorization: Bearer <token>`".into(),
        ))
        .into_response();
    };
    let Some(user) = auth(secret.trim()) else {
        return WebError::Api(mawex_api::ApiError::Unauthenticated(
            "the token is not valid here".into(),
        ))
        .into_response();
    };
    if !allows(user.role, needs) {
        return WebError::Api(mawex_api::ApiError::PermissionDenied(format!(
            "token {} has the {} role: {method} {path} is not for it",
            user.id,
            role_name(user.role)
        )))
        .into_response();
    }
    let changes = method != Method::GET;
    let uri = request.uri().path().to_owned();
    let response = next.run(request).await;
    if changes {
        tracing::info!(
            target: "mawex::audit",
            token = %user.id,
            %method,
            path = %uri,
            status = response.status().as_u16(),
            "web write"
        );
    }
    response
}

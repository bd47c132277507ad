//! Who may call what: every route has a rule (a route without one is refused), checked
//! against the caller's bearer token by [`WebConfig::auth`](crate::WebConfig::auth). The
//! roles are the gRPC server's: a `client` submits, reads and cancels tasks; an `admin`
//! does everything; a `viewer` reads everything and changes nothing, enforced here, not by
//! hidden buttons. Every change is written to the audit log (`mawex::audit`).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use mawex_api::GroupName;

use crate::sessions::session_of;
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
    /// The groups a client is limited to (`None`: every group). It submits only to these,
    /// and sees, lists and cancels only their tasks, as on gRPC.
    pub groups: Option<Vec<GroupName>>,
}

impl WebUser {
    /// A caller with `role`, of every group.
    pub fn new(id: impl Into<String>, role: WebRole) -> Self {
        WebUser {
            id: id.into(),
            role,
            groups: None,
        }
    }

    /// The same caller, limited to `groups`.
    pub fn limited_to(mut self, groups: impl IntoIterator<Item = GroupName>) -> Self {
        self.groups = Some(groups.into_iter().collect());
        self
    }

    fn allows_group(&self, group: &GroupName) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|groups| groups.contains(group))
    }
}

/// The caller of a request, as the guard found it (none when no tokens are checked).
pub(crate) type Caller = Option<axum::Extension<WebUser>>;

/// Refuses `group` to a caller limited to other groups.
pub(crate) fn check_group(caller: &Caller, group: &GroupName) -> Result<(), WebError> {
    match caller {
        Some(axum::Extension(user)) if !user.allows_group(group) => {
            Err(WebError::Api(mawex_api::ApiError::PermissionDenied(
                format!("token {} may not use group {group}", user.id),
            )))
        }
        _ => Ok(()),
    }
}

/// Hides a task outside the caller's groups: it learns nothing of the others' tasks.
pub(crate) fn check_visible(caller: &Caller, view: &mawex_api::TaskView) -> Result<(), WebError> {
    match caller {
        Some(axum::Extension(user)) if !user.allows_group(&view.spec.group) => Err(WebError::Api(
            mawex_api::ApiError::task_not_found(view.spec.id),
        )),
        _ => Ok(()),
    }
}

/// Whether the caller is limited to some groups.
pub(crate) fn is_limited(caller: &Caller) -> Option<&WebUser> {
    caller
        .as_ref()
        .map(|axum::Extension(user)| user)
        .filter(|user| user.groups.is_some())
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
    let read = is_read(method);
    Some(match (read, path) {
        (
            true,
            "/api/v1/tasks"
            | "/api/v1/tasks/{id}"
            | "/api/v1/tasks/{id}/output"
            | "/api/v1/graphs/{id}",
        ) => ClientRead,
        (
            false,
            "/api/v1/tasks"
            | "/api/v1/tasks/batch"
            | "/api/v1/tasks/{id}/cancel"
            | "/api/v1/graphs"
            | "/api/v1/graphs/{id}/cancel",
        ) => ClientWrite,
        (
            true,
            "/api/v1/failed"
            | "/api/v1/groups"
            | "/api/v1/groups/{group}"
            | "/api/v1/history"
            | "/api/v1/pods"
            | "/api/v1/schedules"
            | "/api/v1/broadcasts"
            | "/api/v1/broadcasts/{id}"
            | "/metrics",
        ) => AdminRead,
        // The pages show groups and pods: what viewers and admins read.
        (true, path) if is_page(path) => AdminRead,
        (false, "/logout") => ClientRead,
        (
            false,
            "/api/v1/tasks/{id}/retry"
            | "/api/v1/tasks/bulk"
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

/// The dashboard's pages and what keeps them live (not the API, not `/metrics`).
pub(crate) fn is_page(path: &str) -> bool {
    matches!(
        path,
        "/" | "/groups"
            | "/tasks"
            | "/tasks/{id}"
            | "/graphs/{id}"
            | "/pods"
            | "/failed"
            | "/failed/messages"
            | "/schedules"
            | "/broadcasts"
            | "/fragments/{*rest}"
            | "/events"
    )
}

/// Open to anyone: the page's script and style, the login page, the API's description.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/api/openapi.json" | "/static/live.js" | "/static/style.css" | "/login"
    )
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
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = matched.as_ref().map_or("", MatchedPath::as_str).to_owned();
    if let Err(refused) = same_site(&request, app.auth.is_some()) {
        return refused.into_response();
    }
    let Some(auth) = &app.auth else {
        return next.run(request).await;
    };
    // An unknown path answers 404 after this.
    if is_open(&path) || path.is_empty() {
        return next.run(request).await;
    }
    let Some(needs) = needs(&method, &path) else {
        return WebError::Api(mawex_api::ApiError::PermissionDenied(format!(
            "{method} {path} has no access rule"
        )))
        .into_response();
    };
    let headers = request.headers();
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let user = match (bearer, session_of(headers)) {
        (Some(secret), _) => auth(secret.trim()),
        (None, Some(session)) => {
            // A cookie goes with requests other sites make: a change must come from here.
            if !is_read(&method) && !same_origin(headers) {
                return WebError::Api(mawex_api::ApiError::PermissionDenied(
                    "a change with a session cookie must come from this dashboard's own pages \
                     (its Origin header)"
                        .into(),
                ))
                .into_response();
            }
            app.sessions.user(&session)
        }
        (None, None) => None,
    };
    let Some(user) = user else {
        if is_read(&method)
            && is_page(&path)
            && !path.starts_with("/fragments")
            && path != "/events"
        {
            return Redirect::to("/login").into_response();
        }
        return WebError::Api(mawex_api::ApiError::Unauthenticated(
            "a token is required: send `Authorization: Bearer <token>`, or log in".into(),
        ))
        .into_response();
    };
    // A caller limited to groups reads and changes only tasks of its groups, which only
    // the routes of tasks check: the rest (pages, the failed queue, groups…) are not for it.
    if user.groups.is_some() && !matches!(needs, Needs::ClientRead | Needs::ClientWrite) {
        return WebError::Api(mawex_api::ApiError::PermissionDenied(format!(
            "token {} is limited to some groups: {method} {path} is not for it",
            user.id
        )))
        .into_response();
    }
    if !allows(user.role, needs) {
        return WebError::Api(mawex_api::ApiError::PermissionDenied(format!(
            "token {} has the {} role: {method} {path} is not for it",
            user.id,
            role_name(user.role)
        )))
        .into_response();
    }
    let changes = !is_read(&method);
    let uri = request.uri().path().to_owned();
    request.extensions_mut().insert(user.clone());
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

/// Whether a request's `Origin` is the host it was sent to (a browser sends both).
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
    };
    match (
        header(axum::http::header::ORIGIN),
        header(axum::http::header::HOST),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        _ => false,
    }
}

/// GET and HEAD change nothing.
fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Refuses what a browser sends on another site's behalf: a change whose `Origin` is not this
/// dashboard's; a change to the API whose body is not declared JSON (a cross-site form or
/// `no-cors` fetch cannot declare it without the browser asking first); and, without tokens,
/// a request to a host name other than `localhost` or an IP address (DNS rebinding would
/// let another site read the API through a name it controls).
fn same_site(request: &Request, tokens: bool) -> Result<(), WebError> {
    let headers = request.headers();
    let refuse = |why: &str| {
        Err(WebError::Api(mawex_api::ApiError::PermissionDenied(
            why.into(),
        )))
    };
    if !tokens {
        // A browser always names the host; a request that names none is not a browser's.
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(ToString::to_string))
            .unwrap_or_else(|| "localhost".to_owned());
        let host = host.as_str();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if !(name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()) {
            return refuse(
                "a dashboard without tokens answers only to localhost or an IP address, \
                 not to a host name: set master.tokens to serve it under a name",
            );
        }
    }
    if is_read(request.method()) {
        return Ok(());
    }
    if headers.contains_key(axum::http::header::ORIGIN) && !same_origin(headers) {
        return refuse("a change must come from this dashboard's own pages (its Origin header)");
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if request.uri().path().starts_with("/api/") && !json {
        return Err(WebError::BadRequest(
            "a change to the API takes a body of Content-Type: application/json".into(),
        ));
    }
    Ok(())
}

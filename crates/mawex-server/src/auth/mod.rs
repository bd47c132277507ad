//! Who may call what: bearer tokens with roles, checked in front of both mawex services.
//!
//! A call carries `authorization: Bearer <secret>`. The guard finds its token, checks the
//! role the RPC needs (`rules.rs`, one table), and hands the caller on to the service as a
//! [`Caller`] in the request's extensions, where the services check groups and pod ids.
//! Refusals and admin actions are logged on the `mawex::audit` target with the token's id,
//! never its secret.

mod guard;
mod rules;
mod tokens;

pub(crate) use guard::Guarded;
pub use tokens::{generate_token, hash_secret, Role, TokenEntry, TokenStore, Tokens};

use std::sync::Arc;

use mawex_api::GroupName;
use tonic::Status;

/// The authenticated caller of a request, as the services see it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) token: Arc<TokenEntry>,
    pub(crate) store: TokenStore,
}

impl Caller {
    /// Resolves when the caller's token is removed or changed: long streams end then.
    pub(crate) fn revoked(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.store.revoked(self.token.clone())
    }

    /// The caller of `request`, if the server checks tokens.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }

    /// Refuses `group` unless the token may use it.
    pub(crate) fn check_group(&self, group: &GroupName) -> Result<(), Status> {
        if self.token.allows_group(group) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "token {} may not use group {group}",
                self.token.id()
            )))
        }
    }
}

/// Refuses `group` for a caller whose token may not use it; anyone may without tokens.
pub(crate) fn check_group(caller: Option<&Caller>, group: &GroupName) -> Result<(), Status> {
    caller.map_or(Ok(()), |c| c.check_group(group))
}

/// Refused calls logged per [`REFUSALS_WINDOW`] at most: an unauthenticated peer can send
/// calls in a loop, and must not flood the audit log with them.
const REFUSALS_LOGGED: u64 = 20;
const REFUSALS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

struct RefusalWindow {
    started: Option<std::time::Instant>,
    logged: u64,
    suppressed: u64,
}

static REFUSALS: std::sync::Mutex<RefusalWindow> = std::sync::Mutex::new(RefusalWindow {
    started: None,
    logged: 0,
    suppressed: 0,
});

/// Logs a refused call on the audit target, at most [`REFUSALS_LOGGED`] per window; the
/// rest are counted, and the count is logged when the next window opens.
pub(crate) fn log_refused(call: &str, peer: &str, status: &Status) {
    let mut window = REFUSALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    if window
        .started
        .is_none_or(|at| now.duration_since(at) >= REFUSALS_WINDOW)
    {
        if window.suppressed > 0 {
            tracing::warn!(
                target: "mawex::audit",
                refused = window.suppressed,
                "more calls were refused than logged in the last window"
            );
        }
        *window = RefusalWindow {
            started: Some(now),
            logged: 0,
            suppressed: 0,
        };
    }
    if window.logged >= REFUSALS_LOGGED {
        window.suppressed = window.suppressed.saturating_add(1);
        return;
    }
    window.logged += 1;
    drop(window);
    tracing::warn!(
        target: "mawex::audit",
        call,
        peer,
        code = ?status.code(),
        reason = status.message(),
        "call refused"
    );
}

/// The token id of a caller, for logs (`-` without tokens).
pub(crate) fn token_id(caller: Option<&Caller>) -> &str {
    caller.map_or("-", |c| c.token.id())
}

/// Resolves when the token of `caller` is revoked; never without tokens.
pub(crate) fn revoked(caller: Option<&Caller>) -> futures::future::BoxFuture<'static, ()> {
    match caller {
        Some(c) => Box::pin(c.revoked()),
        None => Box::pin(std::future::pending()),
    }
}

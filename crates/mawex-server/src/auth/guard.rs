//! The guard in front of a mawex service: finds the caller's token and checks its role.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tonic::Status;

use super::rules;
use super::tokens::{Role, TokenStore};
use super::Caller;

/// A service behind the token check (none without tokens: every call passes).
#[derive(Clone)]
pub(crate) struct Guarded<S> {
    inner: S,
    tokens: Option<TokenStore>,
    /// The role every call of the service needs; `None`: each RPC's own rule.
    role: Option<Role>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S, tokens: Option<TokenStore>) -> Self {
        Guarded {
            inner,
            tokens,
            role: None,
        }
    }

    /// A service whose every call needs `role`.
    pub(crate) fn for_role(inner: S, tokens: Option<TokenStore>, role: Role) -> Self {
        Guarded {
            inner,
            tokens,
            role: Some(role),
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

/// Where a call came from, for the audit log.
fn peer<B>(request: &http::Request<B>) -> String {
    crate::connections::peer_addr(request.extensions())
        .map_or_else(|| "-".to_owned(), |a| a.to_string())
}

impl<S> Guarded<S> {
    /// The caller of `request`, or the status that refuses it.
    fn check<B>(&self, store: &TokenStore, request: &http::Request<B>) -> Result<Caller, Status> {
        let path = request.uri().path();
        let Some(needed) = self.role.or_else(|| rules::needed(path)) else {
            return Err(Status::permission_denied(format!(
                "{path} has no access rule on this server"
            )));
        };
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(secret) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(Status::unauthenticated(
                "a token is required: send `authorization: Bearer <token>`",
            ));
        };
        let tokens = store.current();
        let Some(token) = tokens.find_shared(secret.trim()) else {
            return Err(Status::unauthenticated("the token is not valid"));
        };
        let allowed = match token.role() {
            // A viewer reads whatever the path's role, and changes nothing.
            Role::Viewer => rules::is_read(path) && self.role.is_none(),
            role => rules::allows(role, needed),
        };
        if !allowed {
            return Err(Status::permission_denied(format!(
                "token {} has the {} role; {path} needs the {needed} role",
                token.id(),
                token.role()
            )));
        }
        Ok(Caller {
            token: token.clone(),
            store: store.clone(),
        })
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Guarded<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(tokens) = &self.tokens else {
            return Box::pin(self.inner.call(request));
        };
        match self.check(tokens, &request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                super::log_refused(request.uri().path(), &peer(&request), &status);
                let response = status.into_http();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

//! The HTTP side of the mawex dashboard: a REST/JSON API under `/api/v1`, described by an
//! OpenAPI document at `/api/openapi.json` (derived from the handlers and their types), over
//! any [`MasterProxy`]: an embedded master's `LocalMasterProxy`, or a `RemoteMasterProxy`
//! of a master elsewhere. Any HTTP client can enqueue and inspect work with it.
//!
//! [`router`] is an [`axum::Router`] to serve as it is or to mount in an application's own:
//!
//! ```no_run
//! # async fn serve(proxy: std::sync::Arc<dyn mawex_api::MasterProxy>) -> std::io::Result<()> {
//! let app = axum::Router::new().merge(mawex_web::router(proxy, mawex_web::WebConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Every error answers with its HTTP status and a JSON body naming it:
//! `{"error": {"code": "not_found", "message": "task 0190… not found"}}` (see [`WebError`]).

mod api;
mod auth;
mod bulk;
mod charts;
mod error;
mod json;
mod login;
mod metrics;
mod pages;
mod pod_usage;
mod sessions;
mod task_pages;
mod workflows;

use std::sync::Arc;

use mawex_api::MasterProxy;

pub use api::MAX_BATCH;
pub use auth::{Authenticator, WebRole, WebUser};
pub use error::{ErrorAnswer, ErrorDetail, WebError};
pub use json::{
    Body, Broadcast, BroadcastPage, BulkAction, BulkBody, BulkScope, ErrorBody, FailedCount,
    FailedFilterBody, Failure, Group, GroupSettingsBody, GroupSettingsPatch, Matched, Minute,
    NewBroadcast, NewSchedule, NewTask, Pod, Schedule, Submitted, Target, Task, TaskFilter,
    TaskPage,
};

/// How the web side serves.
#[derive(Clone)]
#[non_exhaustive]
pub struct WebConfig {
    /// The largest request body accepted (a batch of submits, say); a larger one is refused
    /// with 413 before it is read whole.
    pub max_body_bytes: usize,
    /// Registers the master's recorded metrics in each scrape's registry (for an embedded
    /// master: `move |r| metrics.register(r)` with `Master::metrics`). `/metrics` serves the
    /// state's figures without it.
    pub metrics: Option<RegisterMetrics>,
    /// Finds the caller of each request's bearer token: set, every route but the OpenAPI
    /// document needs a token whose role allows it (see [`WebRole`]). `None`: no checks,
    /// for a server only trusted callers reach (loopback).
    pub auth: Option<Authenticator>,
    /// What the overview says of the masters (which leads, the members, the journal's size
    /// on disk…), from the application that serves the dashboard: the proxy does not know.
    pub status: Option<StatusSource>,
    /// Marks the session cookie `Secure` (sent over HTTPS only): set it when the dashboard
    /// is served over HTTPS.
    pub secure_cookies: bool,
}

/// Facts about the masters, as label and value, each time the overview is drawn (see
/// [`WebConfig::status`]).
pub type StatusSource =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Vec<(String, String)>> + Send + Sync>;

/// Registers metrics in a registry (see [`WebConfig::metrics`]).
pub type RegisterMetrics = Arc<dyn Fn(&mut prometheus_client::registry::Registry) + Send + Sync>;

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("metrics", &self.metrics.is_some())
            .field("auth", &self.auth.is_some())
            .field("status", &self.status.is_some())
            .field("secure_cookies", &self.secure_cookies)
            .finish()
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            max_body_bytes: 8 * 1024 * 1024,
            metrics: None,
            auth: None,
            status: None,
            secure_cookies: false,
        }
    }
}

impl WebConfig {
    /// The same settings, with facts about the masters (`status`, asked each time the
    /// overview is drawn, given a second to answer) on the overview.
    pub fn with_status<F, Fut>(mut self, status: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<(String, String)>> + Send + 'static,
    {
        self.status = Some(Arc::new(move || Box::pin(status())));
        self
    }

    /// The same settings, with the master's metrics registered at each scrape.
    pub fn with_metrics(
        mut self,
        register: impl Fn(&mut prometheus_client::registry::Registry) + Send + Sync + 'static,
    ) -> Self {
        self.metrics = Some(Arc::new(register));
        self
    }

    /// The same settings, requiring a token that `authenticate` knows on every call.
    pub fn with_auth(
        mut self,
        authenticate: impl Fn(&str) -> Option<WebUser> + Send + Sync + 'static,
    ) -> Self {
        self.auth = Some(Arc::new(authenticate));
        self
    }
}

/// What every handler reaches.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) proxy: Arc<dyn MasterProxy>,
    /// `WebConfig::max_body_bytes`, for the error that names it.
    pub(crate) max_body_bytes: usize,
    /// `WebConfig::metrics`.
    pub(crate) metrics: Option<RegisterMetrics>,
    /// `WebConfig::auth`.
    pub(crate) auth: Option<Authenticator>,
    /// The pages' sessions.
    pub(crate) sessions: Arc<sessions::Sessions>,
    /// Event streams open now.
    pub(crate) streams: Arc<std::sync::atomic::AtomicUsize>,
    /// The pods' CPU and memory over the last hour.
    pub(crate) pod_usage: Arc<pod_usage::PodUsage>,
    /// `WebConfig::status`.
    pub(crate) status: Option<StatusSource>,
    /// `WebConfig::secure_cookies`.
    pub(crate) secure_cookies: bool,
    /// Failed logins lately, to slow down guessing.
    pub(crate) failed_logins: Arc<login::FailedLogins>,
}

/// The API (`/api/v1/…`), its OpenAPI document (`/api/openapi.json`) and `/metrics`, over
/// `proxy`.
pub fn router(proxy: Arc<dyn MasterProxy>, config: WebConfig) -> axum::Router {
    let state = AppState {
        proxy,
        max_body_bytes: config.max_body_bytes,
        metrics: config.metrics.clone(),
        auth: config.auth.clone(),
        sessions: Arc::default(),
        streams: Arc::default(),
        pod_usage: Arc::default(),
        status: config.status.clone(),
        secure_cookies: config.secure_cookies,
        failed_logins: Arc::default(),
    };
    api::router(state, &config)
}

/// The OpenAPI document of the API, as `/api/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::openapi()
}

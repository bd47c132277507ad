//! Sessions of the dashboard's pages: a login exchanges a token for a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie; the server keeps who it stands for, for 12 hours,
//! and at most 10,000 of them (the oldest go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::WebUser;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "mawex_session";
/// How long a session lasts.
const TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, (WebUser, Instant)>>,
}

impl Sessions {
    /// A new session of `user`: its id.
    pub(crate) fn open(&self, user: WebUser) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        open.retain(|_, (_, since)| now.duration_since(*since) < TTL);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(k, _)| k.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), (user, now));
        id
    }

    /// Who session `id` stands for, while it lasts.
    pub(crate) fn user(&self, id: &str) -> Option<WebUser> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (user, since) = open.get(id)?;
        (since.elapsed() < TTL).then(|| user.clone())
    }

    /// Ends session `id`.
    pub(crate) fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

/// The session id in a request's `Cookie` header.
pub(crate) fn session_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

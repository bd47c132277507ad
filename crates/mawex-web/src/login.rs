//! Logging in to the pages: a token, once, for a session cookie.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use maud::{html, DOCTYPE};
use serde::Deserialize;

use crate::sessions::{session_of, COOKIE};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
}

fn page(message: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (crate::pages::head("Log in"))
                body {
                    form.login method="post" action="/login" {
                        h1 { "mawex" }
                        @if let Some(message) = message { p.bad { (message) } }
                        label for="token" { "Token" }
                        input id="token" name="token" type="password" autocomplete="current-password" autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
        .into_string(),
    )
}

async fn login_page(State(app): State<AppState>) -> Response {
    if app.auth.is_none() {
        return Redirect::to("/").into_response();
    }
    page(None).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// How many logins may fail in one [`FAILURES_WINDOW`] before every login waits for the
/// next: guessing tokens takes forever, and a login with a good token is at most a minute
/// late.
const MAX_FAILURES: u32 = 20;
const FAILURES_WINDOW: Duration = Duration::from_secs(60);

/// Failed logins in the current window (of all callers: a guesser may come from anywhere).
#[derive(Debug, Default)]
pub(crate) struct FailedLogins(Mutex<Option<(Instant, u32)>>);

impl FailedLogins {
    /// Whether logins are refused for now.
    fn closed(&self) -> bool {
        let window = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(*window, Some((since, n)) if n >= MAX_FAILURES && since.elapsed() < FAILURES_WINDOW)
    }

    fn failed(&self) {
        let mut window = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *window = match *window {
            Some((since, n)) if since.elapsed() < FAILURES_WINDOW => {
                Some((since, n.saturating_add(1)))
            }
            _ => Some((Instant::now(), 1)),
        };
    }
}

async fn login(State(app): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let Some(auth) = &app.auth else {
        return Redirect::to("/").into_response();
    };
    if app.failed_logins.closed() {
        tracing::warn!(target: "mawex::audit", "web login refused: too many failed logins");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            page(Some("Too many failed logins: try again in a minute.")),
        )
            .into_response();
    }
    let Some(user) = auth(form.token.trim()) else {
        app.failed_logins.failed();
        tracing::info!(target: "mawex::audit", "web login refused: an unknown token");
        return (
            StatusCode::UNAUTHORIZED,
            page(Some("That token is not valid here.")),
        )
            .into_response();
    };
    tracing::info!(target: "mawex::audit", token = %user.id, "web login");
    let session = app.sessions.open(user);
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200{secure}");
    ([(SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = session_of(&headers) {
        app.sessions.close(&session);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

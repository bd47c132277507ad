//! `/metrics`: the master's metrics in the OpenMetrics text format. What the master records
//! (transitions, wait and run times, commits) comes from the registration the application
//! gives (`WebConfig::metrics`); the state's figures are read at each scrape from the proxy,
//! so they are exact: tasks pending and running per group, pods, and whether this master
//! answers (a node that does not lead says 0).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{AppState, WebError};

/// OpenMetrics' media type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

pub(crate) async fn metrics(State(app): State<AppState>) -> Result<Response, WebError> {
    let mut registry = Registry::default();
    if let Some(register) = &app.metrics {
        register(&mut registry);
    }
    let mawex = registry.sub_registry_with_prefix("mawex");
    let up = Gauge::<i64>::default();
    mawex.register(
        "up",
        "1 if this master answers (it runs, and leads if it is a node of a cluster)",
        up.clone(),
    );
    // Down, or not the leader: no state figures (the counters above are still this node's).
    let groups = app.proxy.list_groups().await;
    up.set(i64::from(groups.is_ok()));
    let groups = groups.unwrap_or_default();
    let pods = app.proxy.list_pods().await.unwrap_or_default();
    let pending = Family::<GroupLabels, Gauge>::default();
    let running = Family::<GroupLabels, Gauge>::default();
    for group in &groups {
        let labels = GroupLabels {
            group: group.group.to_string(),
        };
        pending.get_or_create(&labels).set(gauge(group.pending));
        running.get_or_create(&labels).set(gauge(group.running));
    }
    mawex.register("queue_depth", "Tasks waiting to run, by group", pending);
    mawex.register("running", "Tasks running, by group", running);
    let connected = Gauge::<i64>::default();
    connected.set(gauge(pods.len() as u64));
    mawex.register("pods", "Pods connected", connected);
    let draining = Gauge::<i64>::default();
    draining.set(gauge(pods.iter().filter(|p| p.draining).count() as u64));
    mawex.register(
        "pods_draining",
        "Pods connected that take no new work",
        draining,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| {
        WebError::Api(mawex_api::ApiError::Internal(format!(
            "encoding the metrics: {e}"
        )))
    })?;
    Ok(([(CONTENT_TYPE, OPENMETRICS)], text).into_response())
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

//! Every endpoint of `/api/v1` against an embedded master with a pod, through the router as
//! a server would call it: what each answers, and the clear JSON error (with its status) of
//! each kind of bad input.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use mawex::{
    GroupName, HandlerError, HandlerRegistry, InProcess, Master, MasterProxy, MemoryJournal, Pod,
    PodConfig, PodId, TaskInput,
};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A master in memory with one pod (`echo` answers its payload, `fail` fails for good,
/// `sleep` waits as many milliseconds as its payload says), and the API over it.
struct Fixture {
    master: Master,
    pod: Pod,
    app: axum::Router,
}

impl Fixture {
    async fn start(config: mawex_web::WebConfig) -> Fixture {
        Fixture::start_with(config, false).await
    }

    /// With `metrics`, the master's recorded metrics are exported too.
    async fn start_with(config: mawex_web::WebConfig, metrics: bool) -> Fixture {
        let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
        let config = if metrics {
            let recorded = master.metrics().await.unwrap();
            config.with_metrics(move |registry| recorded.register(registry))
        } else {
            config
        };
        let mut handlers = HandlerRegistry::new();
        handlers
            .register("echo", |t: TaskInput| async move { Ok(t.payload) })
            .unwrap()
            .register("fail", |_t: TaskInput| async move {
                Err(HandlerError::permanent("it broke"))
            })
            .unwrap()
            .register("log", |t: TaskInput| async move {
                t.log.line("hello from the log");
                Ok(t.payload)
            })
            .unwrap()
            .register("sleep", |t: TaskInput| async move {
                let ms: u64 = std::str::from_utf8(&t.payload).unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(t.payload)
            })
            .unwrap();
        let pod = Pod::start(
            PodConfig::new(
                PodId::new("pod-1").unwrap(),
                vec![group("web"), group("other"), group("cron")],
            )
            .with_slots(2)
            .with_prefetch(0),
            Arc::new(InProcess::new(handlers)),
            Arc::new(master.pod_connector()),
        )
        .unwrap();
        let proxy: Arc<dyn MasterProxy> = Arc::new(master.proxy());
        let app = mawex_web::router(proxy, config);
        Fixture { master, pod, app }
    }

    /// `method path` with `body` (raw bytes): the status and the JSON answer (Null if none).
    async fn call(&self, method: Method, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {bytes:?}"))
        };
        (status, value)
    }

    /// The HTML at `path` (a page or a fragment), answered 200.
    async fn html(&self, path: &str) -> String {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Body::empty()).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, body.to_string()).await
    }

    /// Waits until task `id` is in `state`.
    async fn until_state(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, task) = self.get(&format!("/api/v1/tasks/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{task}");
            if task["state"] == state {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never {state}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.pod.shutdown().await.unwrap();
        self.master.shutdown().await.unwrap();
    }
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// An error answer: `status`, and a body `{"error": {"code": code, "message": …}}` whose
/// message contains `needle`.
#[track_caller]
fn refused(answer: (StatusCode, Value), status: StatusCode, code: &str, needle: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_submitted_read_listed_and_cancelled() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;

    // One task, run by the pod.
    let (status, submitted) = f
        .post(
            "/api/v1/tasks",
            json!({"group": "web", "handler": "echo", "payload": "hello"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{submitted}");
    assert_eq!(submitted["created"], true);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let done = f.until_state(&id, "succeeded").await;
    assert_eq!(done["output"], "hello");
    assert_eq!(done["group"], "web");
    assert_eq!(done["attempt"], 1);
    assert!(done["finished_at"].as_str().unwrap().ends_with('Z'));

    // Binary payloads go as base64; an id given twice is a harmless repeat.
    let chosen = "01900000-0000-7000-8000-000000000001";
    let binary =
        json!({"id": chosen, "group": "web", "handler": "echo", "payload": {"base64": "AP8="}});
    assert_eq!(
        f.post("/api/v1/tasks", binary.clone()).await.1["created"],
        true
    );
    assert_eq!(f.post("/api/v1/tasks", binary).await.1["created"], false);
    let echoed = f.until_state(chosen, "succeeded").await;
    assert_eq!(echoed["output"], json!({"base64": "AP8="}));

    // A batch: all or none, the bad task named by its index.
    let (status, acks) = f
        .post(
            "/api/v1/tasks/batch",
            json!([
                {"group": "web", "handler": "echo", "payload": "a"},
                {"group": "web", "handler": "echo", "payload": "b", "priority": 5},
                {"group": "other", "handler": "echo"}
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acks}");
    assert_eq!(acks.as_array().unwrap().len(), 3);
    refused(
        f.post(
            "/api/v1/tasks/batch",
            json!([{"group": "web", "handler": "echo"}, {"group": "bad group", "handler": "echo"}]),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "task 1: group",
    );

    // Lists: by group, by state, in pages.
    for ack in acks.as_array().unwrap() {
        f.until_state(ack["id"].as_str().unwrap(), "succeeded")
            .await;
    }
    let (status, page) = f
        .get("/api/v1/tasks?group=web&state=succeeded&limit=2")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(
        page["tasks"][0]["payload"], "",
        "bodies are left out of lists by default"
    );
    let next = page["next"].as_str().unwrap();
    let (_, rest) = f
        .get(&format!(
            "/api/v1/tasks?group=web&state=succeeded&limit=10&after={next}&bodies=true"
        ))
        .await;
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 2, "{rest}");
    assert!(rest["next"].is_null());
    assert!(rest["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["output"].is_string()));
    let (_, other) = f.get("/api/v1/tasks?group=other").await;
    assert_eq!(other["tasks"].as_array().unwrap().len(), 1);

    // Cancel: a delayed task is cancelled (again: still cancelled); a finished one says so.
    let (_, later) = f
        .post(
            "/api/v1/tasks",
            json!({"group": "web", "handler": "echo", "delay_ms": 60000}),
        )
        .await;
    let later = later["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = f
        .post(&format!("/api/v1/tasks/{later}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, cancelled["cancelled"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (_, again) = f
        .post(&format!("/api/v1/tasks/{later}/cancel"), json!({}))
        .await;
    assert_eq!(
        again["cancelled"], true,
        "a repeated cancel is harmless: {again}"
    );
    f.until_state(&later, "cancelled").await;
    let (_, finished) = f
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        finished,
        json!({"cancelled": false, "already": "succeeded"})
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_json_error_with_the_right_status() {
    let mut config = mawex_web::WebConfig::default();
    config.max_body_bytes = 1024;
    let f = Fixture::start(config).await;
    let raw = |body: &'static str| f.call(Method::POST, "/api/v1/tasks", body);

    refused(
        raw("{").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "the body: EOF",
    );
    refused(
        raw(r#"{"group": "web", "handler": "echo", "colour": "red"}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "unknown field `colour`",
    );
    refused(
        raw(r#"{"group": "web"}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "missing field `handler`",
    );
    refused(
        f.post(
            "/api/v1/tasks",
            json!({"group": "no spaces", "handler": "echo"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "group",
    );
    refused(
        f.post(
            "/api/v1/tasks",
            json!({"id": "nope", "group": "web", "handler": "echo"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "\"nope\" is not a task id",
    );
    refused(
        f.post(
            "/api/v1/tasks",
            json!({"group": "web", "handler": "echo", "payload": {"base64": "***"}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "payload: not base64",
    );
    refused(
        f.post("/api/v1/tasks", json!({"group": "web", "handler": "echo", "delay_ms": 5, "run_at": "2030-01-01T00:00:00Z"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "give one, not both",
    );
    let big = json!({"group": "web", "handler": "echo", "payload": "x".repeat(4096)});
    refused(
        f.post("/api/v1/tasks", big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "larger than 1024 bytes",
    );
    refused(
        f.get("/api/v1/tasks/not-an-id").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "is not a task id",
    );
    refused(
        f.get("/api/v1/tasks/01900000-0000-7000-8000-00000000abcd")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    refused(
        f.get("/api/v1/tasks?state=done").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "is not a state",
    );
    refused(
        f.get("/api/v1/tasks?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "limit",
    );
    refused(
        f.get("/api/v1/tasks?limit=many").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "limit",
    );
    refused(
        f.get("/api/v1/tasks?colour=red").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "colour",
    );
    refused(
        f.get("/api/v1/nothing/here").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "this path",
    );
    refused(
        f.get("/api/v1/groups/unknown-group").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "group unknown-group",
    );
    refused(
        f.call(Method::PUT, "/api/v1/groups/web", r#"{"rate_burst": 5}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "rate_burst: only with rate_per_second",
    );
    refused(
        f.post("/api/v1/pods/nobody/drain", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "pod nobody",
    );
    refused(
        f.post("/api/v1/pods/bad%20id/drain", json!({})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "bad id",
    );
    refused(
        f.post("/api/v1/failed/retry", json!({"kind": "boom"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "is not an error kind",
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_queue_groups_and_pods_are_read_and_steered() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;
    let batch: Vec<Value> = (0..3)
        .map(|_| json!({"group": "web", "handler": "fail", "max_attempts": 1}))
        .collect();
    let (_, acks) = f.post("/api/v1/tasks/batch", Value::Array(batch)).await;
    let ids: Vec<String> = acks
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        let failed = f.until_state(id, "failed").await;
        assert_eq!(failed["error"]["kind"], "handler", "{failed}");
        assert_eq!(failed["error"]["message"], "it broke");
    }
    // The minutes' history counts them (summed over a few minutes: the test may cross one).
    let (status, minutes) = f.get("/api/v1/history?minutes=5").await;
    assert_eq!(status, StatusCode::OK, "{minutes}");
    let minutes = minutes.as_array().unwrap();
    assert_eq!(minutes.len(), 5);
    let sum = |field: &str| {
        minutes
            .iter()
            .map(|m| m[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (sum("accepted"), sum("failed"), sum("succeeded")),
        (3, 3, 0)
    );
    assert!(minutes[4]["minute"].as_str().unwrap().ends_with(":00.000Z"));
    for bad in ["minutes=0", "minutes=1441", "minutes=x", "hours=1"] {
        let (status, _) = f.get(&format!("/api/v1/history?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, summary) = f.get("/api/v1/failed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        summary,
        json!([{"group": "web", "kind": "handler", "count": 3}])
    );
    // A line by message, each with the search that finds its tasks.
    let messages = f.html("/failed/messages?group=web&kind=handler").await;
    let row = r#"<td class="bad">it broke</td><td class="num">3</td>"#;
    assert!(messages.contains(row), "{messages}");
    assert!(
        messages.contains(
            r#"href="/tasks?group=web&amp;state=failed&amp;kind=handler&amp;error=it+broke""#
        ),
        "{messages}"
    );
    let (status, _) = f.get("/failed/messages?group=web&kind=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The count first, then the act, on everything the filter matches.
    let (_, counted) = f
        .post(
            "/api/v1/failed/retry",
            json!({"group": "web", "kind": "handler", "dry_run": true}),
        )
        .await;
    assert_eq!(counted, json!({"count": 3, "dry_run": true}));
    let (_, counted) = f
        .post(
            "/api/v1/failed/purge",
            json!({"ids": [ids[0]], "dry_run": true}),
        )
        .await;
    assert_eq!(counted["count"], 1);
    let (_, retried) = f
        .post(&format!("/api/v1/tasks/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(retried["count"], 1);
    let again = f.until_state(&ids[0], "failed").await;
    // Its page tells the story in order: both failed attempts, then its end.
    assert_eq!(again["attempt"], 2, "{again}");
    let page = f.html(&format!("/fragments/task/{}", ids[0])).await;
    let first = page
        .find("attempt 1 failed: handler: it broke")
        .expect(&page);
    let second = page
        .find("attempt 2 failed: handler: it broke")
        .expect(&page);
    assert!(first < second, "{page}");
    assert!(page.contains("<ol class=\"timeline\">"), "{page}");
    refused(
        f.post(
            &format!("/api/v1/tasks/{}/retry", ids[0].replace('0', "1")),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "in the failed queue",
    );
    let (_, purged) = f
        .post("/api/v1/failed/purge", json!({"group": "web"}))
        .await;
    assert_eq!(purged, json!({"count": 3, "dry_run": false}));
    assert_eq!(f.get("/api/v1/failed").await.1, json!([]));

    // Groups: listed, set, read back.
    let (status, set) = f
        .call(
            Method::PUT,
            "/api/v1/groups/web",
            r#"{"paused": true, "max_concurrency": 3, "rate_per_second": 10}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let (_, web) = f.get("/api/v1/groups/web").await;
    assert_eq!(web["settings"]["paused"], true, "{web}");
    assert_eq!(web["settings"]["max_concurrency"], 3);
    assert_eq!(web["settings"]["rate_burst"], 10);
    let (_, groups) = f.get("/api/v1/groups").await;
    assert!(groups
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["group"] == "web"));

    // A patch changes what it names and keeps the rest; null turns a limit off.
    let (status, patched) = f
        .call(
            Method::PATCH,
            "/api/v1/groups/web",
            r#"{"paused": false, "rate_burst": 40}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        patched,
        json!({"paused": false, "max_concurrency": 3, "rate_per_second": 10, "rate_burst": 40,
               "max_attempts": null})
    );
    // A new rate keeps the burst it had.
    let (_, patched) = f
        .call(
            Method::PATCH,
            "/api/v1/groups/web",
            r#"{"rate_per_second": 20}"#,
        )
        .await;
    assert_eq!(
        (&patched["rate_per_second"], &patched["rate_burst"]),
        (&json!(20), &json!(40)),
        "{patched}"
    );
    let (_, patched) = f
        .call(
            Method::PATCH,
            "/api/v1/groups/web",
            r#"{"max_concurrency": null, "rate_per_second": null}"#,
        )
        .await;
    assert_eq!(patched["max_concurrency"], Value::Null, "{patched}");
    assert_eq!(patched["rate_per_second"], Value::Null, "{patched}");
    refused(
        f.call(Method::PATCH, "/api/v1/groups/web", r#"{"rate_burst": 5}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "no rate_per_second",
    );
    refused(
        f.call(Method::PATCH, "/api/v1/groups/web", r#"{"colour": 5}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "unknown field",
    );

    // Pods: listed, drained.
    let (_, pods) = f.get("/api/v1/pods").await;
    assert_eq!(pods[0]["id"], "pod-1", "{pods}");
    assert_eq!(pods[0]["slots"], 2);
    let (status, _) = f.post("/api/v1/pods/pod-1/drain", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.get("/api/v1/pods").await.1[0]["draining"], true);
    f.stop().await;
}

/// The ids of a task list's answer.
fn ids_of(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_searched_and_acted_on_in_bulk_by_selection_or_by_filter() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;
    // Four that fail ("it broke"), two that wait in a group no pod serves.
    let mut batch: Vec<Value> = (0..4)
        .map(|i| {
            json!({"group": "web", "handler": "fail", "max_attempts": 1,
                   "payload": format!("invoice {i} of acme"), "fairness_key": format!("t{}", i % 2)})
        })
        .collect();
    batch.push(
        json!({"group": "parked", "handler": "echo", "payload": "invoice 4 of acme",
                      "dedup_key": "nightly"}),
    );
    batch.push(json!({"group": "parked", "handler": "echo", "payload": "invoice 5 of zeta"}));
    let (_, acks) = f.post("/api/v1/tasks/batch", Value::Array(batch)).await;
    let ids: Vec<String> = acks
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids[..4] {
        f.until_state(id, "failed").await;
    }

    // Search by every field, in either order.
    let fixture = &f;
    let search = |query: &str| {
        let path = format!("/api/v1/tasks?{query}");
        let f = fixture;
        async move {
            let (status, page) = f.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            ids_of(&page)
        }
    };
    assert_eq!(search("error=broke").await, ids[..4]);
    assert_eq!(search("payload=acme&group=parked").await, ids[4..5]);
    assert_eq!(search("dedup_key=nightly").await, ids[4..5]);
    assert_eq!(
        search("fairness_key=t1").await,
        [ids[1].clone(), ids[3].clone()]
    );
    assert_eq!(
        search("handler=echo&order=newest").await,
        [ids[5].clone(), ids[4].clone()]
    );
    assert_eq!(search(&format!("id={}", ids[2])).await, ids[2..3]);
    assert_eq!(
        search("id=0190a000-0000-7000-8000-000000000000").await,
        Vec::<String>::new()
    );
    assert_eq!(
        search("from=2000-01-01T00:00&until=2100-01-01%2000:00:00").await,
        ids
    );
    assert_eq!(
        search("until=2000-01-01T00:00:00Z").await,
        Vec::<String>::new()
    );
    refused(
        f.get("/api/v1/tasks?order=sideways").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "sideways",
    );
    refused(
        f.get("/api/v1/tasks?from=yesterday").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "from",
    );
    refused(
        f.get("/api/v1/tasks?from=2030-01-01T00:00&until=2020-01-01T00:00")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "earlier",
    );

    // The whole filter, counted first: the failed ones with "broke", whatever page shows.
    let by_filter = json!({"action": "retry", "filter": {"error": "broke"}, "dry_run": true});
    assert_eq!(
        f.post("/api/v1/tasks/bulk", by_filter).await.1,
        json!({"count": 4, "dry_run": true})
    );
    // A selection: only the ticked ones the action applies to (a parked task is no failure).
    let selected = json!({"action": "purge", "ids": [ids[0], ids[4]]});
    assert_eq!(
        f.post("/api/v1/tasks/bulk", selected).await.1,
        json!({"count": 1, "dry_run": false})
    );
    let (status, _) = f.get(&format!("/api/v1/tasks/{}", ids[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "purged");
    let retry = json!({"action": "retry", "scope": "filter", "filter": {"error": "broke", "fairness_key": "t1"}});
    assert_eq!(f.post("/api/v1/tasks/bulk", retry).await.1["count"], 2);
    for id in [&ids[1], &ids[3]] {
        let task = f.until_state(id, "failed").await;
        assert_eq!(task["attempt"], 2, "ran again: {task}");
    }
    // Pending tasks: reprioritised, moved (then served by the pod), cancelled.
    let parked = json!({"group": "parked"});
    let change = json!({"action": "reprioritise", "priority": 7, "filter": parked});
    assert_eq!(f.post("/api/v1/tasks/bulk", change).await.1["count"], 2);
    assert_eq!(
        f.get(&format!("/api/v1/tasks/{}", ids[5])).await.1["priority"],
        7
    );
    let cancel = json!({"action": "cancel", "ids": [ids[5]]});
    assert_eq!(f.post("/api/v1/tasks/bulk", cancel).await.1["count"], 1);
    f.until_state(&ids[5], "cancelled").await;
    let to_web = json!({"action": "move", "to_group": "web", "scope": "filter", "filter": parked});
    assert_eq!(f.post("/api/v1/tasks/bulk", to_web).await.1["count"], 1);
    let moved = f.until_state(&ids[4], "succeeded").await;
    assert_eq!(moved["group"], "web", "{moved}");

    // Bad requests say what is wrong.
    for (body, needle) in [
        (
            json!({"action": "explode", "ids": [ids[1]]}),
            "unknown variant",
        ),
        (json!({"action": "retry"}), "takes `ids`"),
        (
            json!({"action": "cancel", "scope": "filter"}),
            "an empty one",
        ),
        (
            json!({"action": "retry", "scope": "selected"}),
            "no task is selected",
        ),
        (
            json!({"action": "move", "filter": {}}),
            "to_group is required",
        ),
        (
            json!({"action": "reprioritise", "filter": {}}),
            "priority is required",
        ),
        (json!({"action": "retry", "ids": ["nope"]}), "not a task id"),
        (
            json!({"action": "retry", "filter": {"state": "asleep"}}),
            "state",
        ),
        (
            json!({"action": "retry", "filter": {"colour": "red"}}),
            "unknown field",
        ),
    ] {
        refused(
            f.post("/api/v1/tasks/bulk", body.clone()).await,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            needle,
        );
    }
    let too_many: Vec<String> = (0..=mawex_web::MAX_BATCH).map(|_| ids[1].clone()).collect();
    refused(
        f.post(
            "/api/v1/tasks/bulk",
            json!({"action": "cancel", "ids": too_many}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "act on a filter instead",
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_and_live_output_are_submitted_read_and_drawn() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;
    let task = |handler: &str, payload: &str| json!({"group": "web", "handler": handler, "payload": payload, "output_limit": 100});
    let graph = json!({
        "nodes": [
            {"name": "extract", "task": task("log", "e")},
            {"name": "transform", "task": task("echo", "t")},
            {"name": "load", "task": task("echo", "l")},
        ],
        "edges": [
            {"from": "extract", "to": "transform"},
            {"from": "transform", "to": "load", "policy": "all_finished"},
        ],
    });
    let (status, submitted) = f.post("/api/v1/graphs", graph).await;
    assert_eq!(status, StatusCode::OK, "{submitted}");
    assert_eq!(submitted["created"], true);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let view = loop {
        let (status, view) = f.get(&format!("/api/v1/graphs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["finished"] == true {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["state"] == "succeeded"), "{view}");
    assert_eq!(nodes[2]["after"], json!(["transform"]));
    let extract = nodes[0]["task"].as_str().unwrap().to_owned();
    let load = nodes[2]["task"].as_str().unwrap().to_owned();
    let (status, output) = f.get(&format!("/api/v1/tasks/{extract}/output")).await;
    assert_eq!(status, StatusCode::OK, "{output}");
    assert_eq!(output["lines"][0]["text"], "hello from the log");
    assert_eq!(output["lines"][0]["stream"], "log");
    assert_eq!(
        (output["ended"].clone(), output["finished"].clone()),
        (json!(true), json!(true))
    );
    let (_, after) = f
        .get(&format!("/api/v1/tasks/{extract}/output?after=1"))
        .await;
    assert_eq!(after["lines"], json!([]));
    // A task over REST runs after another; a bad policy is named.
    let (status, then) = f
        .post(
            "/api/v1/tasks",
            json!({"group": "web", "handler": "echo", "after": [load]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{then}");
    f.until_state(then["id"].as_str().unwrap(), "succeeded")
        .await;
    refused(
        f.post(
            "/api/v1/tasks",
            json!({"group": "web", "handler": "echo", "after": [load], "policy": "sometimes"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "sometimes",
    );
    refused(
        f.post("/api/v1/graphs", json!({"nodes": [{"name": "a", "task": task("echo", "")}], "edges": [{"from": "a", "to": "a"}]})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "cycle",
    );
    // The pages: the graph drawn with its nodes' states; a task's dependencies and output.
    let page = f.html(&format!("/graphs/{id}")).await;
    assert!(page.contains("<svg class=\"graph\""), "{page}");
    assert_eq!(page.matches("node state-succeeded").count(), 3, "{page}");
    let task_page = f.html(&format!("/tasks/{load}")).await;
    assert!(
        task_page.contains("Runs after") && task_page.contains("when it finished"),
        "{task_page}"
    );
    assert!(task_page.contains(&format!("/graphs/{id}")), "{task_page}");
    let extract_page = f.html(&format!("/tasks/{extract}")).await;
    assert!(extract_page.contains("Live output") && extract_page.contains("hello from the log"));
    let (status, cancelled) = f
        .post(&format!("/api/v1/graphs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, cancelled["cancelled"].clone()),
        (StatusCode::OK, json!(0))
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_endpoint() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;
    let (status, doc) = f.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let response = f
        .app
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks/batch", "post"),
        ("/api/v1/tasks/{id}", "get"),
        ("/api/v1/tasks/{id}/cancel", "post"),
        ("/api/v1/tasks/{id}/retry", "post"),
        ("/api/v1/tasks/bulk", "post"),
        ("/api/v1/failed", "get"),
        ("/api/v1/failed/retry", "post"),
        ("/api/v1/failed/purge", "post"),
        ("/api/v1/groups", "get"),
        ("/api/v1/history", "get"),
        ("/api/v1/groups/{group}", "get"),
        ("/api/v1/groups/{group}", "put"),
        ("/api/v1/groups/{group}", "patch"),
        ("/api/v1/pods", "get"),
        ("/api/v1/pods/{id}/drain", "post"),
        ("/api/v1/schedules", "get"),
        ("/api/v1/schedules", "post"),
        ("/api/v1/schedules/{name}", "delete"),
        ("/api/v1/schedules/{name}/pause", "post"),
        ("/api/v1/schedules/{name}/resume", "post"),
        ("/api/v1/broadcasts", "get"),
        ("/api/v1/broadcasts", "post"),
        ("/api/v1/broadcasts/{id}", "get"),
        ("/api/v1/graphs", "post"),
        ("/api/v1/graphs/{id}", "get"),
        ("/api/v1/graphs/{id}/cancel", "post"),
        ("/api/v1/tasks/{id}/output", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is not described"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in ["Task", "NewTask", "ErrorAnswer", "Group", "Pod"] {
        assert!(schemas.contains_key(schema), "no schema {schema}");
    }
    assert_eq!(mawex_web::openapi().paths.paths.len(), paths.len());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_and_broadcasts_are_created_read_and_steered() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;
    let every_second = json!({
        "name": "tick", "cron": "* * * * * *",
        "task": {"group": "web", "handler": "echo", "payload": "tick"}
    });
    let (status, _) = f.post("/api/v1/schedules", every_second).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let fired = loop {
        let (_, list) = f.get("/api/v1/schedules").await;
        let tick = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "tick")
            .cloned();
        let tick = tick.expect("the schedule is listed");
        if tick["fired"].as_u64().unwrap() >= 1 {
            break tick;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never fired: {tick}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (fired["cron"].clone(), fired["time_zone"].clone()),
        (json!("* * * * * *"), json!("UTC"))
    );
    let last = fired["last_task"].as_str().unwrap();
    assert_eq!(f.until_state(last, "succeeded").await["output"], "tick");
    // Its next tick: a second after one it handled, so after its last.
    let (last_tick, next_tick) = (
        fired["last_tick"].as_str().unwrap(),
        fired["next_tick"].as_str().unwrap(),
    );
    assert!(next_tick > last_tick, "{fired}");
    assert!(next_tick.ends_with(".000Z"), "a whole second: {next_tick}");
    let nightly = json!({
        "name": "nightly", "cron": "30 2 * * *", "time_zone": "Europe/Berlin",
        "task": {"group": "web", "handler": "echo"}
    });
    assert_eq!(
        f.post("/api/v1/schedules", nightly).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, list) = f.get("/api/v1/schedules").await;
    let nightly = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "nightly")
        .unwrap();
    // 02:30 in Berlin is 00:30 or 01:30 UTC, by the season.
    let next = nightly["next_tick"].as_str().unwrap();
    assert!(
        next.ends_with("T00:30:00.000Z") || next.ends_with("T01:30:00.000Z"),
        "{nightly}"
    );
    let (status, _) = f
        .call(Method::DELETE, "/api/v1/schedules/nightly", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f.post("/api/v1/schedules/tick/pause", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.get("/api/v1/schedules").await.1[0]["paused"], true);
    let (status, _) = f.post("/api/v1/schedules/tick/resume", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f
        .call(Method::DELETE, "/api/v1/schedules/tick", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.get("/api/v1/schedules").await.1, json!([]));
    let (status, _) = f
        .call(Method::DELETE, "/api/v1/schedules/tick", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "deleting again is harmless");
    refused(
        f.call(
            Method::DELETE,
            "/api/v1/schedules/no%20spaces",
            Body::empty(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "no spaces",
    );
    refused(
        f.post("/api/v1/schedules", json!({"name": "bad", "cron": "every day", "task": {"group": "web", "handler": "echo"}})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "cron",
    );
    refused(
        f.post("/api/v1/schedules", json!({"name": "ids", "cron": "* * * * *", "task": {"id": "01900000-0000-7000-8000-000000000001", "group": "web", "handler": "echo"}})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "task.id",
    );

    // A broadcast to the group's one pod, followed to its end.
    let (status, fired) = f
        .post(
            "/api/v1/broadcasts",
            json!({"app": "site", "group": "web", "handler": "echo", "payload": "v1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fired}");
    assert_eq!(fired["targets"][0]["pod"], "pod-1");
    let id = fired["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let (_, view) = f.get(&format!("/api/v1/broadcasts/{id}")).await;
        if view["finished_at"].is_string() {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["targets"][0]["state"], "done", "{done}");
    assert_eq!(done["targets"][0]["source"], "origin");
    // The page draws who pulled from whom: the pod, under the origin.
    let html = f.html("/fragments/broadcasts").await;
    let tree = &html[html.find("<details class=\"propagation\"").expect(&html)..];
    let origin = tree.find(">origin<").expect(tree);
    let pod = tree.find(">pod-1<").expect(tree);
    assert!(origin < pod, "{tree}");
    let (_, page) = f.get("/api/v1/broadcasts?app=site").await;
    assert_eq!(page["broadcasts"].as_array().unwrap().len(), 1);
    refused(
        f.get("/api/v1/broadcasts/xyz").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "not a broadcast id",
    );
    refused(
        f.get("/api/v1/broadcasts/999").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "999",
    );
    refused(
        f.post("/api/v1/broadcasts", json!({"app": "site", "group": "web", "handler": "echo", "tree_branches": 2, "per_source": 2})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "give one, not both",
    );
    f.stop().await;
}

/// The value of sample `name` with `labels` in a parsed scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v),
        ) => *v,
        other => {
            let names: Vec<String> = scrape
                .samples
                .iter()
                .map(|s| format!("{}{:?}", s.metric, s.labels))
                .collect();
            panic!("{name} {labels:?}: {other:?}; the scrape has {names:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_their_counts_are_the_apis() {
    let f = Fixture::start_with(mawex_web::WebConfig::default(), true).await;
    let mut batch: Vec<Value> = (0..20)
        .map(|i| json!({"group": "web", "handler": "echo", "payload": format!("{i}")}))
        .collect();
    batch.extend((0..5).map(|_| json!({"group": "web", "handler": "fail", "max_attempts": 1})));
    let (_, acks) = f.post("/api/v1/tasks/batch", Value::Array(batch)).await;
    for (i, ack) in acks.as_array().unwrap().iter().enumerate() {
        let state = if i < 20 { "succeeded" } else { "failed" };
        f.until_state(ack["id"].as_str().unwrap(), state).await;
    }
    // Tasks a schedule submits count as accepted too (paused before the scrape: no tick
    // comes between the two reads).
    let ticking = json!({"name": "tick", "cron": "* * * * * *", "task": {"group": "cron", "handler": "echo"}});
    f.post("/api/v1/schedules", ticking).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, cron) = f.get("/api/v1/groups/cron").await;
        if cron["succeeded"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule never ran: {cron}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.post("/api/v1/schedules/tick/pause", json!({})).await;
    // Three waiting in a paused group.
    f.call(Method::PUT, "/api/v1/groups/other", r#"{"paused": true}"#)
        .await;
    for _ in 0..3 {
        f.post(
            "/api/v1/tasks",
            json!({"group": "other", "handler": "echo"}),
        )
        .await;
    }

    let response = f
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("does not parse ({e}):\n{text}"));

    let transitions = |to: &str| {
        sample(
            &scrape,
            "mawex_task_transitions_total",
            &[("group", "web"), ("to", to)],
        )
    };
    let (_, web) = f.get("/api/v1/groups/web").await;
    assert_eq!(transitions("accepted"), 25.0, "{text}");
    assert_eq!(transitions("started"), 25.0);
    assert_eq!(transitions("succeeded"), web["succeeded"].as_f64().unwrap());
    assert_eq!(transitions("failed"), web["failed"].as_f64().unwrap());
    assert_eq!(transitions("succeeded"), 20.0);
    let (_, other) = f.get("/api/v1/groups/other").await;
    assert_eq!(
        sample(&scrape, "mawex_queue_depth", &[("group", "other")]),
        other["pending"].as_f64().unwrap()
    );
    assert_eq!(
        sample(&scrape, "mawex_queue_depth", &[("group", "other")]),
        3.0
    );
    assert_eq!(sample(&scrape, "mawex_pods", &[]), 1.0);
    let (_, cron) = f.get("/api/v1/groups/cron").await;
    let in_cron: u64 = ["pending", "running", "succeeded", "failed", "cancelled"]
        .iter()
        .map(|state| cron[*state].as_u64().unwrap())
        .sum();
    assert_eq!(
        sample(
            &scrape,
            "mawex_task_transitions_total",
            &[("group", "cron"), ("to", "accepted")]
        ),
        in_cron as f64,
        "{text}"
    );
    assert_eq!(sample(&scrape, "mawex_up", &[]), 1.0);
    // Every attempt's run time and wait, every commit.
    let run_time = scrape
        .samples
        .iter()
        .find(|s| s.metric == "mawex_run_time_seconds" && s.labels.get("group") == Some("web"))
        .unwrap_or_else(|| panic!("no run time:\n{text}"));
    match &run_time.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(all, 25.0, "{text}");
        }
        other => panic!("run time is {other:?}"),
    }
    assert!(
        text.contains("mawex_queue_wait_seconds_count{group=\"web\"} 25"),
        "{text}"
    );
    assert!(
        text.contains("mawex_journal_commit_seconds_count"),
        "{text}"
    );
    f.stop().await;
}

/// `path` called with `token` (and an empty JSON body for a write): the status.
async fn status_with(f: &Fixture, method: Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = if method == Method::GET {
        Body::empty()
    } else {
        Body::from("{}")
    };
    f.app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_each_role_may_do_what_it_may_and_a_viewer_changes_nothing() {
    use mawex_web::{WebRole, WebUser};
    let config = mawex_web::WebConfig::default().with_auth(|secret| {
        let role = match secret {
            "viewer-secret" => WebRole::Viewer,
            "client-secret" => WebRole::Client,
            "admin-secret" => WebRole::Admin,
            _ => return None,
        };
        Some(WebUser::new(secret.trim_end_matches("-secret"), role))
    });
    let f = Fixture::start(config).await;
    let task = "/api/v1/tasks/01900000-0000-7000-8000-000000000001";
    let denied = StatusCode::FORBIDDEN;
    // (method, path, may a viewer, a client, an admin) — an allowed call may still fail for
    // its own reasons (not found, a bad body), never with 401 or 403.
    let table: &[(Method, &str, [bool; 3])] = &[
        (Method::GET, "/api/v1/tasks", [true, true, true]),
        (Method::GET, task, [true, true, true]),
        (Method::POST, "/api/v1/tasks", [false, true, true]),
        (Method::POST, "/api/v1/tasks/batch", [false, true, true]),
        (Method::POST, &format!("{task}/cancel"), [false, true, true]),
        (Method::POST, &format!("{task}/retry"), [false, false, true]),
        (Method::POST, "/api/v1/tasks/bulk", [false, false, true]),
        (Method::GET, "/api/v1/failed", [true, false, true]),
        (Method::POST, "/api/v1/failed/retry", [false, false, true]),
        (Method::POST, "/api/v1/failed/purge", [false, false, true]),
        (Method::GET, "/api/v1/groups", [true, false, true]),
        (Method::GET, "/api/v1/history", [true, false, true]),
        (Method::GET, "/api/v1/groups/web", [true, false, true]),
        (Method::PUT, "/api/v1/groups/web", [false, false, true]),
        (Method::PATCH, "/api/v1/groups/web", [false, false, true]),
        (Method::GET, "/api/v1/pods", [true, false, true]),
        (
            Method::POST,
            "/api/v1/pods/pod-1/drain",
            [false, false, true],
        ),
        (Method::GET, "/api/v1/schedules", [true, false, true]),
        (Method::POST, "/api/v1/schedules", [false, false, true]),
        (Method::DELETE, "/api/v1/schedules/x", [false, false, true]),
        (
            Method::POST,
            "/api/v1/schedules/x/pause",
            [false, false, true],
        ),
        (
            Method::POST,
            "/api/v1/schedules/x/resume",
            [false, false, true],
        ),
        (Method::GET, "/api/v1/broadcasts", [true, false, true]),
        (Method::GET, "/api/v1/broadcasts/1", [true, false, true]),
        (Method::POST, "/api/v1/broadcasts", [false, false, true]),
        (Method::POST, "/api/v1/graphs", [false, true, true]),
        (
            Method::GET,
            "/api/v1/graphs/01900000-0000-7000-8000-000000000002",
            [true, true, true],
        ),
        (
            Method::POST,
            "/api/v1/graphs/01900000-0000-7000-8000-000000000002/cancel",
            [false, true, true],
        ),
        (Method::GET, &format!("{task}/output"), [true, true, true]),
        (Method::GET, "/metrics", [true, false, true]),
        (Method::HEAD, "/api/v1/groups", [true, false, true]),
    ];
    for (method, path, allowed) in table {
        assert_eq!(
            status_with(&f, method.clone(), path, None).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_eq!(
            status_with(&f, method.clone(), path, Some("made-up")).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with an unknown token"
        );
        for (token, may) in ["viewer-secret", "client-secret", "admin-secret"]
            .into_iter()
            .zip(allowed)
        {
            let status = status_with(&f, method.clone(), path, Some(token)).await;
            if *may {
                assert!(
                    status != denied && status != StatusCode::UNAUTHORIZED,
                    "{method} {path} with {token}: {status}"
                );
            } else {
                assert_eq!(status, denied, "{method} {path} with {token}");
            }
        }
    }
    // The description is open; every operation it describes is in the table above.
    assert_eq!(
        status_with(&f, Method::GET, "/api/openapi.json", None).await,
        StatusCode::OK
    );
    let (_, doc) = f.get("/api/openapi.json").await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        operations + 2,
        table.len(),
        "a route of the API has no line in this table"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_limited_to_groups_sees_and_changes_only_their_tasks() {
    use mawex_web::{WebRole, WebUser};
    let config = mawex_web::WebConfig::default().with_auth(|secret| match secret {
        "admin-secret" => Some(WebUser::new("admin", WebRole::Admin)),
        "builds-secret" => {
            Some(WebUser::new("builds", WebRole::Client).limited_to([group("other")]))
        }
        _ => None,
    });
    let f = Fixture::start(config).await;
    let as_ = |token: &'static str, method: Method, path: String, body: &'static str| {
        let app = f.app.clone();
        async move {
            let request = Request::builder()
                .method(method)
                .uri(&path)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(body))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (_, web_task) = as_(
        "admin-secret",
        Method::POST,
        "/api/v1/tasks".into(),
        r#"{"group": "web", "handler": "sleep", "payload": "60000"}"#,
    )
    .await;
    let web_task = web_task["id"].as_str().unwrap().to_owned();
    // Its own group: submitted, listed, read, cancelled.
    let (status, own) = as_(
        "builds-secret",
        Method::POST,
        "/api/v1/tasks".into(),
        r#"{"group": "other", "handler": "sleep", "payload": "60000"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let own = own["id"].as_str().unwrap().to_owned();
    let (status, page) = as_(
        "builds-secret",
        Method::GET,
        "/api/v1/tasks?group=other".into(),
        "",
    )
    .await;
    assert_eq!((status, ids_of(&page)), (StatusCode::OK, vec![own.clone()]));
    assert_eq!(
        as_(
            "builds-secret",
            Method::GET,
            format!("/api/v1/tasks/{own}"),
            ""
        )
        .await
        .0,
        StatusCode::OK
    );
    // Another group: refused to submit to, and its tasks are nowhere to be seen.
    let refused_submit = as_(
        "builds-secret",
        Method::POST,
        "/api/v1/tasks".into(),
        r#"{"group": "web", "handler": "echo"}"#,
    )
    .await;
    refused(
        refused_submit,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "may not use group web",
    );
    // Nor may it run a task after another group's task (it would get its output), in a
    // submit or a graph.
    let after_theirs: &'static str = Box::leak(
        format!(r#"{{"group": "other", "handler": "echo", "after": ["{web_task}"]}}"#)
            .into_boxed_str(),
    );
    refused(
        as_(
            "builds-secret",
            Method::POST,
            "/api/v1/tasks".into(),
            after_theirs,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &web_task,
    );
    let graph_after_theirs: &'static str = Box::leak(
        format!(r#"{{"nodes": [{{"name": "n", "task": {after_theirs}}}]}}"#).into_boxed_str(),
    );
    refused(
        as_(
            "builds-secret",
            Method::POST,
            "/api/v1/graphs".into(),
            graph_after_theirs,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &web_task,
    );
    let batch = r#"[{"group": "other", "handler": "echo"}, {"group": "web", "handler": "echo"}]"#;
    refused(
        as_(
            "builds-secret",
            Method::POST,
            "/api/v1/tasks/batch".into(),
            batch,
        )
        .await,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "group web",
    );
    refused(
        as_(
            "builds-secret",
            Method::GET,
            format!("/api/v1/tasks/{web_task}"),
            "",
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &web_task,
    );
    // A search by its id finds nothing: not an error that would tell it exists.
    let (status, page) = as_(
        "builds-secret",
        Method::GET,
        format!("/api/v1/tasks?id={web_task}&group=other"),
        "",
    )
    .await;
    assert_eq!(
        (status, ids_of(&page)),
        (StatusCode::OK, Vec::<String>::new())
    );
    // Nothing but the routes of tasks: no page, no failed queue, no groups.
    refused(
        as_("builds-secret", Method::GET, "/api/v1/groups".into(), "").await,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "limited to some groups",
    );
    refused(
        as_("builds-secret", Method::GET, "/api/v1/tasks".into(), "").await,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "name one",
    );
    refused(
        as_(
            "builds-secret",
            Method::GET,
            "/api/v1/tasks?group=web".into(),
            "",
        )
        .await,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "group web",
    );
    refused(
        as_(
            "builds-secret",
            Method::POST,
            format!("/api/v1/tasks/{web_task}/cancel"),
            "{}",
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &web_task,
    );
    let (_, still) = as_(
        "admin-secret",
        Method::GET,
        format!("/api/v1/tasks/{web_task}"),
        "",
    )
    .await;
    assert_ne!(still["state"], "cancelled", "{still}");
    let (status, cancelled) = as_(
        "builds-secret",
        Method::POST,
        format!("/api/v1/tasks/{own}/cancel"),
        "{}",
    )
    .await;
    assert_eq!(
        (status, &cancelled["cancelled"]),
        (StatusCode::OK, &json!(true)),
        "{cancelled}"
    );
    as_(
        "admin-secret",
        Method::POST,
        format!("/api/v1/tasks/{web_task}/cancel"),
        "{}",
    )
    .await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_close_the_login_for_a_while_and_a_session_cookie_is_secure_over_https() {
    use mawex_web::{WebRole, WebUser};
    let mut config = mawex_web::WebConfig::default().with_auth(|secret| {
        (secret == "admin-secret").then(|| WebUser::new("admin", WebRole::Admin))
    });
    config.secure_cookies = true;
    let f = Fixture::start(config).await;
    let log_in = |token: &'static str| {
        let app = f.app.clone();
        async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri("/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={token}")))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let cookie = response
                .headers()
                .get("set-cookie")
                .map(|c| c.to_str().unwrap().to_owned());
            (response.status(), cookie)
        }
    };
    let (status, cookie) = log_in("admin-secret").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    for _ in 0..20 {
        assert_eq!(log_in("guess").await.0, StatusCode::UNAUTHORIZED);
    }
    // Closed for everyone until the minute is over, a good token too.
    assert_eq!(log_in("guess").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        log_in("admin-secret").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Bearer tokens are no login: the API still answers them.
    let (status, _) = with_headers(
        &f,
        Method::GET,
        "/api/v1/groups",
        &[("authorization", "Bearer admin-secret")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    f.stop().await;
}

/// `method path` with `headers` and a JSON body: the status and the JSON answer.
async fn with_headers(
    f: &Fixture,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = f
        .app
        .clone()
        .oneshot(
            request
                .body(Body::from(r#"{"group": "web", "handler": "echo"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_site_would_send_is_refused() {
    let f = Fixture::start(mawex_web::WebConfig::default()).await;
    let json = ("content-type", "application/json");
    // This dashboard's own page may change things; another site's may not.
    let (status, _) = with_headers(
        &f,
        Method::POST,
        "/api/v1/tasks",
        &[
            json,
            ("host", "127.0.0.1:7080"),
            ("origin", "http://127.0.0.1:7080"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    refused(
        with_headers(
            &f,
            Method::POST,
            "/api/v1/tasks",
            &[
                json,
                ("host", "127.0.0.1:7080"),
                ("origin", "http://evil.example"),
            ],
        )
        .await,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "Origin",
    );
    // A body a cross-site form could send without the browser asking first.
    refused(
        with_headers(
            &f,
            Method::POST,
            "/api/v1/tasks",
            &[("content-type", "text/plain"), ("host", "127.0.0.1:7080")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "application/json",
    );
    // Without tokens, a host name is refused (DNS rebinding), even for a read.
    refused(
        with_headers(
            &f,
            Method::GET,
            "/api/v1/tasks",
            &[("host", "evil.example:7080")],
        )
        .await,
        StatusCode::FORBIDDEN,
        "permission_denied",
        "localhost or an IP address",
    );
    let (status, _) = with_headers(
        &f,
        Method::GET,
        "/api/v1/tasks",
        &[("host", "localhost:7080")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    f.stop().await;
}

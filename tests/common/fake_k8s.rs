//! A fake Kubernetes API server for the Job sandbox: exactly the endpoints it uses (create,
//! get, watch and delete Jobs; create Secrets, deleted with the Job that owns them; list pods
//! by label; pod logs), on 127.0.0.1. A Job's payload is read from its Secret.
//!
//! A created Job "runs" by its `MAWEX_HANDLER`:
//! - `echo`: exits 0 with the payload as termination message;
//! - `echo-log`: exits 0 with no message; the payload is the last line of the log;
//! - `report`: exits 0 with an executor report of the payload as message;
//! - `refuse`: exits 1 with an executor report of a permanent handler error;
//! - `fail`: exits 3, "something went wrong" in the log;
//! - `crash`: exits 139 (SIGSEGV);
//! - `hog`: is OOMKilled (137);
//! - `big`: exits 0 with no message and an 8 MiB last log line;
//! - `deadline`: the cluster stops the Job at once: `DeadlineExceeded`;
//! - anything else (`sleep`): runs until deleted.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mawex::sandbox::executor::Report;
use mawex::HandlerError;
use serde_json::json;
use tokio::sync::broadcast;

/// One DELETE the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The Job's name.
    pub name: String,
    /// `propagationPolicy` of the request body.
    pub propagation: Option<String>,
}

#[derive(Default)]
struct Cluster {
    jobs: HashMap<String, Job>,
    secrets: HashMap<String, Secret>,
    created_secrets: Vec<Secret>,
    pods: HashMap<String, Pod>,
    logs: HashMap<String, String>,
    created: Vec<Job>,
    deleted: Vec<Deletion>,
    log_queries: Vec<HashMap<String, String>>,
    version: u64,
    /// How long a create waits, after making the Job, before it answers.
    create_answer_delay: Duration,
}

/// The fake server; dropping it does not stop it (the test's runtime does).
#[derive(Clone)]
pub struct FakeKubernetes {
    cluster: Arc<Mutex<Cluster>>,
    changes: broadcast::Sender<(String, &'static str, Job)>,
    /// Where it listens (`http://127.0.0.1:port`).
    pub url: String,
}

impl FakeKubernetes {
    /// Starts a server on a free loopback port.
    pub async fn start() -> Self {
        let (changes, _) = broadcast::channel(1024);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let fake = FakeKubernetes {
            cluster: Arc::default(),
            changes,
            url,
        };
        let app = Router::new()
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs",
                get(watch_jobs).post(create_job),
            )
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                get(get_job).delete(delete_job),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                axum::routing::post(create_secret),
            )
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// A kube client talking to this server, default namespace `ns`.
    pub fn client(&self, ns: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("url"));
        config.default_namespace = ns.to_owned();
        kube::Client::try_from(config).expect("client")
    }

    /// Every Job as it was created.
    pub fn created(&self) -> Vec<Job> {
        self.lock().created.clone()
    }

    /// Every DELETE received.
    pub fn deleted(&self) -> Vec<Deletion> {
        self.lock().deleted.clone()
    }

    /// Every Secret as it was created.
    pub fn created_secrets(&self) -> Vec<Secret> {
        self.lock().created_secrets.clone()
    }

    /// Names of the Secrets that exist now.
    pub fn live_secrets(&self) -> Vec<String> {
        self.lock().secrets.keys().cloned().collect()
    }

    /// Names of the Jobs that exist now.
    pub fn live_jobs(&self) -> Vec<String> {
        self.lock().jobs.keys().cloned().collect()
    }

    /// From now on, a create makes its Job at once but answers only after `delay` (a slow
    /// API server, or a client that gives up while its request is in flight).
    pub fn delay_create_answers(&self, delay: Duration) {
        self.lock().create_answer_delay = delay;
    }

    /// The query of every log request.
    pub fn log_queries(&self) -> Vec<HashMap<String, String>> {
        self.lock().log_queries.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().expect("fake cluster lock")
    }

    /// Stores a new version of `job` and tells the watchers.
    fn update(&self, kind: &'static str, mut job: Job) -> Job {
        let mut c = self.lock();
        c.version += 1;
        job.metadata.resource_version = Some(c.version.to_string());
        let name = job.metadata.name.clone().unwrap_or_default();
        if kind == "DELETED" {
            c.jobs.remove(&name);
            // The garbage collector: what the Job owned goes with it.
            let uid = job.metadata.uid.clone();
            c.secrets.retain(|_, secret| {
                !secret
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Job" && Some(&o.uid) == uid.as_ref())
            });
            c.pods
                .retain(|_, pod| label(pod, "mawex.io/job") != Some(&name));
        } else {
            c.jobs.insert(name.clone(), job.clone());
        }
        drop(c);
        let _ = self.changes.send((name, kind, job.clone()));
        job
    }

    /// Plays the Job out as its handler says.
    async fn run(self, job: Job) {
        let name = job.metadata.name.clone().unwrap_or_default();
        let env: HashMap<String, String> = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        let handler = env.get("MAWEX_HANDLER").cloned().unwrap_or_default();
        // As a kubelet would, the pod waits for the Secret its payload is mounted from.
        let mut payload = None;
        for _ in 0..500 {
            payload = self.lock().secrets.get(&name).and_then(|s| {
                let data = s.data.as_ref()?.get("payload")?;
                Some(String::from_utf8_lossy(&data.0).into_owned())
            });
            if payload.is_some() || self.current(&name).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Some(payload) = payload else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let Some(mut running) = self.current(&name) else {
            return;
        };
        running.status = Some(JobStatus {
            active: Some(1),
            ..JobStatus::default()
        });
        self.update("MODIFIED", running.clone());
        let ending = match handler.as_str() {
            "echo" => (0, None, payload, String::new()),
            "echo-log" => (0, None, String::new(), format!("starting\n{payload}\n")),
            "report" => (
                0,
                None,
                Report::Ok(payload.into_bytes().into()).encode(),
                String::new(),
            ),
            "refuse" => (
                1,
                None,
                Report::Failed(HandlerError::permanent("bad input")).encode(),
                String::new(),
            ),
            "fail" => (3, None, String::new(), "something went wrong\n".into()),
            "crash" => (
                139,
                Some("Error"),
                String::new(),
                "Segmentation fault\n".into(),
            ),
            "hog" => (137, Some("OOMKilled"), String::new(), "allocating\n".into()),
            "big" => (0, None, String::new(), format!("{}\n", "x".repeat(8 << 20))),
            "deadline" => {
                self.finish(running, None, "Failed", Some("DeadlineExceeded"));
                return;
            }
            _ => return,
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let Some(running) = self.current(&name) else {
            return;
        };
        let (code, reason, message, log) = ending;
        let terminated = ContainerStateTerminated {
            exit_code: code,
            reason: reason.map(str::to_owned),
            message: (!message.is_empty()).then_some(message),
            ..ContainerStateTerminated::default()
        };
        let (kind, reason) = if code == 0 {
            ("Complete", None)
        } else {
            ("Failed", Some("BackoffLimitExceeded"))
        };
        self.add_pod(&running, terminated, log);
        self.finish(running, Some(code), kind, reason);
    }

    fn current(&self, name: &str) -> Option<Job> {
        self.lock().jobs.get(name).cloned()
    }

    fn add_pod(&self, job: &Job, terminated: ContainerStateTerminated, log: String) {
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let name = format!("{}-x7k2p", job.metadata.name.clone().unwrap_or_default());
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: template.metadata.and_then(|m| m.labels),
                ..ObjectMeta::default()
            },
            spec: template.spec,
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "task".into(),
                    state: Some(ContainerState {
                        terminated: Some(terminated),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        };
        let mut c = self.lock();
        c.pods.insert(name.clone(), pod);
        c.logs.insert(name, log);
    }

    fn finish(&self, mut job: Job, code: Option<i32>, kind: &str, reason: Option<&str>) {
        job.status = Some(JobStatus {
            active: Some(0),
            succeeded: Some(i32::from(code == Some(0))),
            failed: Some(i32::from(code != Some(0))),
            conditions: Some(vec![JobCondition {
                type_: kind.to_owned(),
                status: "True".to_owned(),
                reason: reason.map(str::to_owned),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        self.update("MODIFIED", job);
    }
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a String> {
    pod.metadata.labels.as_ref()?.get(key)
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (StatusCode::from_u16(code).expect("status code"), Json(body)).into_response()
}

async fn create_job(
    State(fake): State<FakeKubernetes>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let mut job: Job = match serde_json::from_slice(&body) {
        Ok(job) => job,
        Err(e) => return status(400, "BadRequest", e.to_string()),
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    if fake.lock().jobs.contains_key(&name) {
        return status(
            409,
            "AlreadyExists",
            format!("jobs.batch {name:?} already exists"),
        );
    }
    fake.lock().created.push(job.clone());
    job.metadata.namespace = Some(ns);
    job.metadata.uid = Some(format!("uid-{name}"));
    let job = fake.update("ADDED", job);
    tokio::spawn(fake.clone().run(job.clone()));
    let delay = fake.lock().create_answer_delay;
    tokio::time::sleep(delay).await;
    (StatusCode::CREATED, Json(job)).into_response()
}

async fn create_secret(
    State(fake): State<FakeKubernetes>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let mut secret: Secret = match serde_json::from_slice(&body) {
        Ok(secret) => secret,
        Err(e) => return status(400, "BadRequest", e.to_string()),
    };
    let name = secret.metadata.name.clone().unwrap_or_default();
    let mut c = fake.lock();
    if c.secrets.contains_key(&name) {
        return status(
            409,
            "AlreadyExists",
            format!("secrets {name:?} already exists"),
        );
    }
    c.created_secrets.push(secret.clone());
    secret.metadata.namespace = Some(ns);
    c.secrets.insert(name, secret.clone());
    (StatusCode::CREATED, Json(secret)).into_response()
}

async fn get_job(
    State(fake): State<FakeKubernetes>,
    Path((_, name)): Path<(String, String)>,
) -> Response {
    match fake.current(&name) {
        Some(job) => Json(job).into_response(),
        None => status(404, "NotFound", format!("jobs.batch {name:?} not found")),
    }
}

async fn delete_job(
    State(fake): State<FakeKubernetes>,
    Path((_, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let propagation = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("propagationPolicy")?.as_str().map(str::to_owned));
    fake.lock().deleted.push(Deletion {
        name: name.clone(),
        propagation,
    });
    match fake.current(&name) {
        Some(job) => Json(fake.update("DELETED", job)).into_response(),
        None => status(404, "NotFound", format!("jobs.batch {name:?} not found")),
    }
}

/// Only watches are served: `?watch=true&fieldSelector=metadata.name=<name>`.
async fn watch_jobs(
    State(fake): State<FakeKubernetes>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("watch").map(String::as_str) != Some("true") {
        return status(400, "BadRequest", "this fake only watches jobs".into());
    }
    let Some(name) = query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_owned)
    else {
        return status(
            400,
            "BadRequest",
            "watch needs a metadata.name field selector".into(),
        );
    };
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let mut changes = fake.changes.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let line = |kind: &str, job: &Job| {
        let mut text = json!({ "type": kind, "object": job }).to_string();
        text.push('\n');
        Ok(Bytes::from(text))
    };
    let current = fake.current(&name);
    tokio::spawn(async move {
        if let Some(job) = current {
            let version: u64 = job
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if version > since && tx.send(line("MODIFIED", &job)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::sleep(timeout);
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut end => return,
                change = changes.recv() => match change {
                    Ok((changed, kind, job)) if changed == name => {
                        if tx.send(line(kind, &job)).await.is_err() || kind == "DELETED" {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::new(Body::from_stream(stream))
}

async fn list_pods(
    State(fake): State<FakeKubernetes>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let selector: BTreeMap<String, String> = query
        .get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let c = fake.lock();
    let items: Vec<&Pod> = c
        .pods
        .values()
        .filter(|pod| selector.iter().all(|(k, v)| label(pod, k) == Some(v)))
        .collect();
    Json(json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": { "resourceVersion": c.version.to_string() },
        "items": items,
    }))
    .into_response()
}

/// Honours `tailLines` and `limitBytes` as the real server does.
async fn pod_log(
    State(fake): State<FakeKubernetes>,
    Path((_, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut c = fake.lock();
    c.log_queries.push(query.clone());
    let Some(log) = c.logs.get(&name) else {
        return status(404, "NotFound", format!("pods {name:?} not found"));
    };
    let mut text = log.as_str();
    if let Some(n) = query.get("tailLines").and_then(|v| v.parse::<usize>().ok()) {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .filter(|&i| i < text.len())
            .collect();
        if starts.len() > n {
            text = &text[starts[starts.len() - n]..];
        }
    }
    if let Some(limit) = query
        .get("limitBytes")
        .and_then(|v| v.parse::<usize>().ok())
    {
        text = &text[..limit.min(text.len())];
    }
    text.to_owned().into_response()
}

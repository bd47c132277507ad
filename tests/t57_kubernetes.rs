//! The Kubernetes Job sandbox against a fake API server (always) and a real cluster from the
//! current kubeconfig (only with `MAWEX_K8S_TEST=1`; namespace `MAWEX_K8S_NAMESPACE`, default
//! `default`; it pulls `busybox`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;
#[path = "common/fake_k8s.rs"]
mod fake_k8s;

use std::collections::BTreeSet;

use base64::Engine as _;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_k8s::{Deletion, FakeKubernetes};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;
use mawex::sandbox::kubernetes::{
    job_name, JobCommand, KubernetesConfig, KubernetesJobSandbox, Resources,
};
use mawex::sandbox::testing::{sandbox_suite, Kind};
use mawex::{
    Bytes, Limits, Outcome, Pod, PodConfig, RetryHint, Sandbox, SandboxError, TaskInput, TaskSpec,
    TaskState,
};
use tokio_util::sync::CancellationToken;

const NS: &str = "mawex-test";

/// The conformance suite's handlers as busybox commands: real on a cluster, and named so the
/// fake plays them out.
fn suite_sandbox(client: kube::Client, ns: &str) -> KubernetesJobSandbox {
    let mut config = KubernetesConfig::new(ns, "busybox:1.36");
    config.requests = Resources::new("50m", "32Mi");
    config.limits.cpu = Some("500m".into());
    config.env.insert("LOG_LEVEL".into(), "debug".into());
    let mut sandbox = KubernetesJobSandbox::new(client, config);
    let sh = |script: &str| JobCommand::new(["/bin/sh", "-c", script]);
    sandbox
        .command(
            "echo",
            sh("cat \"$MAWEX_PAYLOAD_FILE\" > /dev/termination-log"),
        )
        .unwrap()
        .command("fail", sh("echo something went wrong >&2; exit 3"))
        .unwrap()
        .command("crash", sh("kill -SEGV $$"))
        .unwrap()
        .command("sleep", JobCommand::new(["sleep", "3600"]))
        .unwrap()
        .command("big", sh("head -c 8388608 /dev/zero | tr '\\0' x"))
        .unwrap()
        .command("hog", sh("tail /dev/zero").env("WHY", "memory"))
        .unwrap();
    sandbox
}

fn fake_sandbox(fake: &FakeKubernetes) -> KubernetesJobSandbox {
    let mut sandbox = suite_sandbox(fake.client(NS), NS);
    for name in ["echo-log", "deadline"] {
        sandbox.command(name, JobCommand::new(["true"])).unwrap();
    }
    sandbox
        .executor("report")
        .unwrap()
        .executor("refuse")
        .unwrap();
    sandbox
}

/// The container that runs the attempt.
fn container(job: &Job) -> &Container {
    &job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn container_env(job: &Job) -> BTreeSet<String> {
    container(job)
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

fn handler_of(job: &Job) -> String {
    container(job)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "MAWEX_HANDLER")
        .and_then(|e| e.value.clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_fake_cluster() {
    let fake = FakeKubernetes::start().await;
    let sandbox = fake_sandbox(&fake);
    sandbox_suite(&sandbox, Kind::Child).await;

    let created = fake.created();
    // Every case but the unknown handler made exactly one Job.
    let handlers: Vec<String> = created.iter().map(handler_of).collect();
    assert_eq!(
        handlers,
        ["echo", "fail", "crash", "sleep", "sleep", "big", "hog"],
        "one Job per attempt, none for an unknown handler"
    );
    for job in &created {
        let name = job.metadata.name.clone().unwrap();
        assert!(name.starts_with("mawex-") && name.len() <= 63, "{name}");
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "mawex");
        assert_eq!(labels["mawex.io/group"], "test");
        assert_eq!(labels["mawex.io/attempt"], "1");
        assert!(labels.contains_key("mawex.io/task"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0), "mawex does the retries");
        assert_eq!(spec.ttl_seconds_after_finished, Some(600));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("busybox:1.36"));
        let resources = container.resources.clone().unwrap();
        assert_eq!(resources.requests.unwrap()["memory"].0, "32Mi");
        let limits = resources.limits.unwrap();
        assert_eq!(limits["cpu"].0, "500m");

        let mut expected: BTreeSet<String> = [
            "MAWEX_TASK_ID",
            "MAWEX_ATTEMPT",
            "MAWEX_GROUP",
            "MAWEX_HANDLER",
            "MAWEX_PAYLOAD_FILE",
            "LOG_LEVEL",
        ]
        .map(String::from)
        .into();
        match handler_of(job).as_str() {
            "hog" => {
                expected.insert("WHY".into());
                assert_eq!(
                    limits["memory"].0,
                    (256u64 << 20).to_string(),
                    "the task's limit"
                );
            }
            "sleep" if spec.active_deadline_seconds.is_some() => {
                assert_eq!(spec.active_deadline_seconds, Some(1), "0.3 s rounds up");
            }
            _ => {
                assert!(!limits.contains_key("memory"));
                assert_eq!(spec.active_deadline_seconds, None);
            }
        }
        assert_eq!(
            container_env(job),
            expected,
            "only the env listed, none inherited"
        );
    }
    let deadlines = created
        .iter()
        .filter(|j| j.spec.as_ref().unwrap().active_deadline_seconds.is_some())
        .count();
    assert_eq!(deadlines, 1, "the timed-out attempt had a deadline");

    let deleted: Vec<Deletion> = fake.deleted();
    assert_eq!(
        deleted.len(),
        created.len(),
        "every Job deleted once: {deleted:?}"
    );
    for (job, deletion) in created.iter().zip(&deleted) {
        assert_eq!(deletion.name, job.metadata.name.clone().unwrap());
        assert_eq!(deletion.propagation.as_deref(), Some("Background"));
    }
    assert!(fake.live_jobs().is_empty());

    // The payload is in no Job: each has a Secret of its own, owned by the Job and mounted
    // in its container, and the Secrets went with their Jobs.
    let secrets = fake.created_secrets();
    assert_eq!(secrets.len(), created.len(), "a Secret per Job");
    for (job, secret) in created.iter().zip(&secrets) {
        let name = job.metadata.name.clone().unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some(name.as_str()));
        let owners = secret.metadata.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("Job", name.as_str())
        );
        assert_eq!(
            owners[0].uid,
            format!("uid-{name}"),
            "owned by the Job as created"
        );
        assert!(secret.data.as_ref().unwrap().contains_key("payload"));
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some(name.as_str())
        );
        let container = &pod.containers[0];
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/var/run/mawex", Some(true))
        );
        let env = container.env.clone().unwrap();
        let file = env.iter().find(|e| e.name == "MAWEX_PAYLOAD_FILE").unwrap();
        assert_eq!(file.value.as_deref(), Some("/var/run/mawex/payload"));
        let payload = secret.data.as_ref().unwrap()["payload"].0.clone();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&payload);
        let raw = String::from_utf8_lossy(&payload).into_owned();
        assert!(
            env.iter().all(|e| {
                let value = e.value.clone().unwrap_or_default();
                payload.is_empty() || (value != raw && value != encoded)
            }),
            "the payload is not in the Job's environment: {env:?}"
        );
    }
    assert!(fake.live_secrets().is_empty(), "deleted with their Jobs");
    let logs = fake.log_queries();
    assert!(!logs.is_empty());
    for query in logs {
        assert!(
            query.contains_key("limitBytes"),
            "logs read bounded: {query:?}"
        );
        assert_eq!(query.get("container").map(String::as_str), Some("task"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_from_the_message_or_the_log_and_the_cluster_deadline_counts() {
    let fake = FakeKubernetes::start().await;
    let sandbox = fake_sandbox(&fake);
    let run = |handler: &str, limits: Limits| {
        let mut input = TaskInput::for_test(handler, "from the job");
        input.limits = limits;
        sandbox.run(input, CancellationToken::new())
    };
    assert_eq!(
        run("echo-log", Limits::default()).await,
        Ok(Bytes::from_static(b"from the job")),
        "no termination message: the last log line"
    );
    assert_eq!(
        run("report", Limits::default()).await,
        Ok(Bytes::from_static(b"from the job")),
        "an executor report is decoded"
    );
    match run("refuse", Limits::default()).await {
        Err(SandboxError::Handler(e)) => {
            assert_eq!(e.message, "bad input");
            assert_eq!(e.retry, RetryHint::Never, "the handler's own hint survives");
        }
        other => panic!("{other:?}"),
    }
    let limit = Duration::from_secs(30);
    assert_eq!(
        run("deadline", Limits::default().with_timeout(limit)).await,
        Err(SandboxError::TimedOut(limit)),
        "DeadlineExceeded is a timeout"
    );
    let deadline_job = fake.created().pop().unwrap();
    assert_eq!(deadline_job.spec.unwrap().active_deadline_seconds, Some(30));

    let mut big = TaskInput::for_test("echo", vec![b'x'; 300 * 1024]);
    big.limits = Limits::default();
    assert!(matches!(
        sandbox.run(big, CancellationToken::new()).await,
        Err(SandboxError::PayloadTooLarge { .. })
    ));
    assert_eq!(
        fake.created().len(),
        4,
        "no Job for a payload over the limit"
    );
    wait_for("every Job deleted", || async {
        fake.live_jobs().is_empty().then_some(())
    })
    .await;
}

/// Starts an attempt, waits for its Job, drops the attempt, and checks the Job is deleted.
async fn dropping_the_attempt_deletes_its_job(fake: FakeKubernetes) {
    let sandbox = Arc::new(fake_sandbox(&fake));
    let input = TaskInput::for_test("sleep", "");
    let name = job_name(&input);
    let running = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move { sandbox.run(input, CancellationToken::new()).await })
    };
    wait_for("the Job to exist", || async {
        fake.live_jobs().contains(&name).then_some(())
    })
    .await;
    running.abort();
    wait_for("the Job to be deleted", || async {
        fake.deleted().iter().any(|d| d.name == name).then_some(())
    })
    .await;
    assert!(fake.live_jobs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_attempt_deletes_its_job() {
    dropping_the_attempt_deletes_its_job(FakeKubernetes::start().await).await;
}

/// An attempt dropped while its create request is still in flight (the server has made the
/// Job, the answer has not come) deletes the Job too: nothing is left running in the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_attempt_is_dropped_during_the_create_is_deleted() {
    let fake = FakeKubernetes::start().await;
    fake.delay_create_answers(Duration::from_secs(60));
    dropping_the_attempt_deletes_its_job(fake).await;
}

/// A pod whose group runs in Jobs: tasks succeed through the master, and shutting the pod
/// down mid-attempt deletes the Job and hands the task back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_running_jobs_cleans_up_when_it_shuts_down() {
    let fake = FakeKubernetes::start().await;
    let m = TestMaster::start().await;
    let jobs = group("jobs");
    let pod = Pod::start(
        PodConfig::new(pod_id("p-kubernetes"), vec![jobs.clone()])
            .with_shutdown_grace(Duration::from_millis(200)),
        Arc::new(fake_sandbox(&fake)),
        m.connector(),
    )
    .unwrap();
    let echo = TaskSpec::new(jobs.clone(), "echo", "through a job");
    m.proxy().submit(echo.clone()).await.unwrap();
    match m.proxy().await_result(echo.id).await.unwrap().outcome {
        Outcome::Succeeded(out) => assert_eq!(out, "through a job"),
        other => panic!("{other:?}"),
    }
    let stuck = TaskSpec::new(jobs.clone(), "sleep", "");
    m.proxy().submit(stuck.clone()).await.unwrap();
    wait_for("the sleeping Job", || async {
        (fake.live_jobs().len() == 1).then_some(())
    })
    .await;
    pod.shutdown().await.unwrap();
    assert!(fake.live_jobs().is_empty(), "no Job outlives its pod");
    let view = wait_for("the task handed back", || async {
        let view = m.proxy().get(stuck.id).await.unwrap();
        (view.state == TaskState::Pending).then_some(view)
    })
    .await;
    // A lease that ran out would have been recorded as a failure.
    assert!(
        view.failures.is_empty(),
        "an interruption is not a failure: {view:?}"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_real_cluster() {
    if std::env::var("MAWEX_K8S_TEST").as_deref() != Ok("1") {
        skipped(
            "conformance_against_a_real_cluster",
            "set MAWEX_K8S_TEST=1 to run against the current kubeconfig",
        );
        return;
    }
    let ns = std::env::var("MAWEX_K8S_NAMESPACE").unwrap_or_else(|_| "default".into());
    let client = kube::Client::try_default().await.unwrap();
    sandbox_suite(&suite_sandbox(client, &ns), Kind::Child).await;
}

/// A Job gets the pod's ceilings, not what its task asked for beyond them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_limits_never_exceed_the_pods_ceilings() {
    let fake = FakeKubernetes::start().await;
    let m = TestMaster::start().await;
    let jobs = group("capped-jobs");
    let ceiling = Limits::default()
        .with_timeout(Duration::from_secs(2))
        .with_memory_bytes(64 << 20);
    let pod = Pod::start(
        PodConfig::new(pod_id("p-capped-jobs"), vec![jobs.clone()]).with_max_limits(ceiling),
        Arc::new(fake_sandbox(&fake)),
        m.connector(),
    )
    .unwrap();
    let mut greedy = TaskSpec::new(jobs, "echo", "capped");
    greedy.limits = Limits::default()
        .with_timeout(Duration::from_secs(3600))
        .with_memory_bytes(1 << 30);
    m.proxy().submit(greedy.clone()).await.unwrap();
    m.proxy().await_result(greedy.id).await.unwrap();
    let created = fake.created();
    let job = created.last().expect("a Job");
    assert_eq!(
        job.spec.as_ref().unwrap().active_deadline_seconds,
        Some(2),
        "the pod's timeout"
    );
    let limits = container(job).resources.clone().unwrap().limits.unwrap();
    assert_eq!(
        limits["memory"].0,
        (64u64 << 20).to_string(),
        "the pod's memory"
    );
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

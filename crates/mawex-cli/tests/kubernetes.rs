//! `mawex worker` with handlers that run as Kubernetes Jobs (`runs_on = "kubernetes"`, the
//! `kubernetes` feature), against the fake API server of the library's tests, reached through
//! a kubeconfig as a real cluster would be: a Job per attempt with the configured image,
//! namespace and resources, beside a handler that runs locally.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "../../../tests/common/fake_k8s.rs"]
mod fake_k8s;
mod support;

use fake_k8s::FakeKubernetes;
use support::{free_port, line_with, mawex, run, start};

const NS: &str = "mawex-jobs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_kubernetes_handlers_as_jobs_and_the_others_locally() {
    let fake = FakeKubernetes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            fake.url
        ),
    )
    .unwrap();
    let port = free_port();
    let config = dir.path().join("mawex.toml");
    std::fs::write(
        &config,
        format!(
            "[client]\nmasters = [\"http://127.0.0.1:{port}\"]\n\
             [master]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
             [worker]\nid = \"jobs-1\"\ngroups = [\"sh\"]\nslots = 2\n\
             [worker.kubernetes]\nnamespace = \"{NS}\"\nimage = \"registry.example/app:1\"\n\
             cpu_request = \"100m\"\nmemory_limit = \"64Mi\"\nenv = {{ STAGE = \"test\" }}\n\
             [worker.handlers.echo]\nargv = [\"/bin/app\", \"echo\"]\nruns_on = \"kubernetes\"\n\
             image = \"registry.example/echo:2\"\n\
             [worker.handlers.upper]\nargv = [\"tr\", \"a-z\", \"A-Z\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let with_config = move |args: &[&str]| {
        let mut command = mawex();
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("KUBECONFIG", &kubeconfig);
        command
    };
    let (_master, lines) = start(with_config(&["master"]));
    line_with(&lines, "listening on");
    let (_worker, _) = start(with_config(&["worker"]));

    let (on_jobs, local) = tokio::task::spawn_blocking(move || {
        let submit = |handler: &str, payload: &str| {
            run(with_config(&[
                "submit",
                "sh",
                handler,
                payload,
                "--wait",
                "--timeout",
                "30s",
            ]))
        };
        (submit("echo", "from a job"), submit("upper", "from here"))
    })
    .await
    .unwrap();
    assert!(on_jobs.status.success(), "{on_jobs:?}");
    assert_eq!(String::from_utf8_lossy(&on_jobs.stdout), "from a job");
    assert!(local.status.success(), "{local:?}");
    assert_eq!(String::from_utf8_lossy(&local.stdout), "FROM HERE");

    // One Job, for the kubernetes handler only, as configured.
    let created = fake.created();
    assert_eq!(created.len(), 1, "{created:?}");
    let job = &created[0];
    assert_eq!(job.metadata.namespace.as_deref(), Some(NS));
    let spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), Some("registry.example/echo:2"));
    assert_eq!(
        container.command.as_deref(),
        Some(&["/bin/app".to_owned(), "echo".to_owned()][..])
    );
    let resources = container.resources.as_ref().unwrap();
    assert_eq!(
        resources.requests.as_ref().unwrap()["cpu"].0,
        "100m".to_owned()
    );
    assert_eq!(
        resources.limits.as_ref().unwrap()["memory"].0,
        "64Mi".to_owned()
    );
    let env = container.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|v| v.name == "STAGE" && v.value.as_deref() == Some("test")),
        "{env:?}"
    );
}

#[test]
fn a_kubernetes_handler_needs_the_job_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mawex.toml");
    std::fs::write(
        &config,
        "[worker]\ngroups = [\"sh\"]\n[worker.handlers.echo]\nargv = [\"echo\"]\n\
         runs_on = \"kubernetes\"\ncwd = \"/tmp\"\n",
    )
    .unwrap();
    let mut command = mawex();
    command
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]);
    let checked = run(command);
    assert_eq!(checked.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        stderr.contains("worker.kubernetes: needed by handler echo"),
        "{stderr}"
    );
}

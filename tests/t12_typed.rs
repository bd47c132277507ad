//! Typed tasks: a serde payload type that names its handler and output, end to end.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::*;
use mawex::{
    ApiError, ErrorKind, HandlerError, HandlerRegistry, Outcome, PodConfig, Task, TaskSpec,
    TypedProxy,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Size {
    width: u32,
    height: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    path: String,
    size: Size,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Thumbnail {
    path: String,
    pixels: u64,
}

impl Task for Resize {
    const HANDLER: &'static str = "resize";
    type Output = Thumbnail;
}

fn handlers() -> HandlerRegistry {
    let mut handlers = HandlerRegistry::new();
    handlers
        .register_task(|task: Resize, _input| async move {
            if task.path.is_empty() {
                return Err(HandlerError::permanent("no path"));
            }
            Ok(Thumbnail {
                path: format!("thumb-{}", task.path),
                pixels: u64::from(task.size.width) * u64::from(task.size.height),
            })
        })
        .unwrap();
    handlers
}

fn resize(path: &str) -> Resize {
    Resize {
        path: path.into(),
        size: Size {
            width: 4,
            height: 3,
        },
    }
}

async fn typed_tasks_run_end_to_end(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("typed");
    let pod = m.pod(
        PodConfig::new(pod_id("p-typed"), vec![g.clone()]),
        handlers(),
    );
    let proxy = m.proxy();

    let handle = proxy
        .submit_task(g.clone(), &resize("cat.png"))
        .await
        .unwrap();
    assert!(handle.ack.created);
    assert_eq!(
        proxy.await_output(handle).await.unwrap(),
        Thumbnail {
            path: "thumb-cat.png".into(),
            pixels: 12
        }
    );
    let out = proxy.run_task(g.clone(), &resize("dog.png")).await.unwrap();
    assert_eq!(out.path, "thumb-dog.png");

    // The handler's own error comes back as the task's failure.
    match proxy.run_task(g.clone(), &resize("")).await {
        Err(ApiError::TaskFailed(e)) => {
            assert_eq!(e.kind, ErrorKind::Handler);
            assert_eq!(e.message, "no path");
        }
        other => panic!("expected the task's failure, got {other:?}"),
    }
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

async fn a_payload_that_does_not_decode_fails_at_once_naming_task_and_field(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("typed-bad");
    let pod = m.pod(
        PodConfig::new(pod_id("p-typed-bad"), vec![g.clone()]),
        handlers(),
    );
    let proxy = m.proxy();
    // Another language's client, say, sends a width as a string.
    let raw = TaskSpec::new(
        g,
        "resize",
        r#"{"path":"cat.png","size":{"width":"wide","height":3}}"#,
    );
    let ack = proxy.submit(raw).await.unwrap();
    let result = proxy.await_result(ack.id).await.unwrap();
    let Outcome::Failed(error) = &result.outcome else {
        panic!("expected a failure, got {:?}", result.outcome);
    };
    assert_eq!(result.attempt.0, 1, "a bad payload is not retried");
    assert!(error.message.contains(&ack.id.to_string()), "{error}");
    assert!(
        error
            .message
            .contains("the payload is not a Resize: size.width: invalid type: string"),
        "{error}"
    );
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

on_both_transports!(
    typed_tasks_run_end_to_end,
    a_payload_that_does_not_decode_fails_at_once_naming_task_and_field,
);

//! The forked sandbox's hook called the wrong way, inside a running runtime (what
//! `#[tokio::main]` does): the application is told at once, and an attempt fails at once with
//! what to do, instead of its children hanging in a forked multi-threaded process. Re-executes
//! itself as the children, so it has its own `main`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use bytes::Bytes;
use mawex::sandbox::{forked, ForkedSandbox};
use mawex::{HandlerRegistry, Sandbox, SandboxError, TaskInput};
use tokio_util::sync::CancellationToken;

#[path = "common/own_main.rs"]
mod own_main;

fn handlers() -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("echo", |t: TaskInput| async move { Ok(t.payload) })
        .unwrap();
    r
}

const ADVICE: &str = "Call it first in a plain `fn main()`";

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The mistake: the hook runs inside the runtime. In a child this answers the attempt and
    // exits; in this process it panics with the advice.
    let told =
        std::panic::catch_unwind(|| rt.block_on(async { forked::run_if_child(&handlers()) }));
    own_main::run_tests(&[
        ("the_application_is_told_at_once", &|| {
            let panic = told
                .as_ref()
                .expect_err("the hook refused to run inside a runtime");
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.contains(ADVICE), "{message}");
        }),
        ("an_attempt_fails_at_once_with_the_advice", &|| {
            rt.block_on(async {
                for fork_server in [true, false] {
                    let mut sandbox = ForkedSandbox::new().unwrap();
                    sandbox.fork_server = fork_server;
                    let input = TaskInput::for_test("echo", Bytes::from_static(b"hi"));
                    let ran = tokio::time::timeout(
                        Duration::from_secs(20),
                        sandbox.run(input, CancellationToken::new()),
                    )
                    .await
                    .expect("the attempt ends instead of hanging");
                    match ran {
                        Err(SandboxError::Handler(e)) => {
                            assert!(e.message.contains(ADVICE), "{e}");
                            assert_eq!(e.retry, mawex::RetryHint::Never, "retrying cannot fix it");
                        }
                        other => panic!("fork server {fork_server}: {other:?}"),
                    }
                }
            })
        }),
    ]);
}

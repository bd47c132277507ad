//! A conformance suite every [`Sandbox`] implementation runs (enabled by the `testing`
//! feature).
//!
//! The sandbox under test must offer these handlers:
//! - `echo`: returns its payload;
//! - `fail`: fails (a handler error, or a non-zero exit);
//! - `crash`: crashes (a panic in-process, death by a signal in a child);
//! - `sleep`: never finishes on its own;
//! - `big` (child sandboxes): writes more output than the sandbox accepts;
//! - `hog` (child sandboxes): allocates about 2 GiB.

use std::time::Duration;

use bytes::Bytes;
use mawex_api::Limits;
use tokio_util::sync::CancellationToken;

use crate::{Sandbox, SandboxError, TaskInput};

/// What kind of sandbox is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Runs in the pod's process: no output or memory limits of its own.
    InProcess,
    /// Runs in a child process: output and memory limits apply.
    Child,
}

async fn run(sandbox: &dyn Sandbox, handler: &str, limits: Limits) -> Result<Bytes, SandboxError> {
    let mut input = TaskInput::for_test(handler, "payload");
    input.limits = limits;
    sandbox.run(input, CancellationToken::new()).await
}

/// Runs every case against `sandbox`; panics on the first that does not hold.
pub async fn sandbox_suite(sandbox: &dyn Sandbox, kind: Kind) {
    let name = sandbox.name();
    assert_eq!(
        run(sandbox, "echo", Limits::default()).await,
        Ok(Bytes::from_static(b"payload")),
        "{name}: success returns the output"
    );
    let failed = run(sandbox, "fail", Limits::default()).await;
    assert!(
        matches!(
            failed,
            Err(SandboxError::Handler(_) | SandboxError::NonZeroExit { .. })
        ),
        "{name}: a failing handler fails: {failed:?}"
    );
    let crashed = run(sandbox, "crash", Limits::default()).await;
    assert!(
        matches!(
            crashed,
            Err(SandboxError::Panicked(_) | SandboxError::Crashed { .. })
        ),
        "{name}: a crash is reported as one: {crashed:?}"
    );
    assert!(
        matches!(
            run(sandbox, "no-such-handler", Limits::default()).await,
            Err(SandboxError::UnknownHandler(_))
        ),
        "{name}: an unknown handler is named"
    );
    let limit = Duration::from_millis(300);
    assert_eq!(
        run(sandbox, "sleep", Limits::default().with_timeout(limit)).await,
        Err(SandboxError::TimedOut(limit)),
        "{name}: the timeout stops the attempt"
    );
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        })
    };
    let cancelled = sandbox.run(TaskInput::for_test("sleep", ""), cancel).await;
    let _ = canceller.await;
    assert_eq!(
        cancelled,
        Err(SandboxError::Cancelled),
        "{name}: cancel stops the attempt"
    );

    if kind == Kind::Child {
        assert!(
            matches!(
                run(sandbox, "big", Limits::default()).await,
                Err(SandboxError::OutputTooLarge { .. })
            ),
            "{name}: output over the limit is refused, not buffered whole"
        );
        let memory = Limits::default().with_memory_bytes(256 << 20);
        let hog = run(sandbox, "hog", memory).await;
        assert!(
            matches!(hog, Err(SandboxError::OutOfMemory { .. })),
            "{name}: the memory limit holds and is reported: {hog:?}"
        );
    }
}

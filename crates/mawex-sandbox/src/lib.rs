//! Where a mawex task body runs.
//!
//! A [`Sandbox`] runs one attempt under a cancellation token and returns the output or a
//! typed [`SandboxError`]. [`InProcess`] calls a handler registered in a [`HandlerRegistry`]
//! inside the pod's own process and turns panics into failures.
//!
//! ```
//! use mawex_sandbox::{HandlerRegistry, InProcess, Sandbox, TaskInput};
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut registry = HandlerRegistry::new();
//! registry.register("upper", |input: TaskInput| async move {
//!     Ok(input.payload.to_ascii_uppercase().into())
//! }).unwrap();
//! let sandbox = InProcess::new(registry);
//! let out = sandbox.run(TaskInput::for_test("upper", "abc"), CancellationToken::new()).await;
//! assert_eq!(out.unwrap(), "ABC");
//! # });
//! ```

mod command;
mod error;
pub mod executor;
pub mod fork_server;
pub mod forked;
mod forked_child;
mod in_process;
mod input;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod process;
mod set;
pub mod ssh;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use command::{CommandSandbox, CommandSpec};
pub use error::{HandlerError, SandboxError};
pub use forked::{run_if_child, ForkedSandbox};
pub use in_process::{HandlerRegistry, InProcess};
pub use input::{LogHandle, TaskInput, ATTEMPT_ENV_PREFIX, INPUTS_DIR_ENV};
pub use set::SandboxSet;
pub use ssh::{SshSandbox, SshStep};

/// Runs attempts of tasks. Implementations must honour `cancel` promptly and the task's
/// timeout, and must not let the attempt outlive the returned future.
#[async_trait]
pub trait Sandbox: Send + Sync + 'static {
    /// A short name for logs ("in-process", "forked", ...).
    fn name(&self) -> &'static str;

    /// Runs one attempt to its end.
    ///
    /// # Errors
    /// A [`SandboxError`] saying how the attempt failed.
    ///
    /// # Cancel safety
    /// Dropping the future stops the attempt as far as the sandbox can (an in-process
    /// handler is dropped at its next `.await`).
    async fn run(&self, input: TaskInput, cancel: CancellationToken)
        -> Result<Bytes, SandboxError>;
}

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use mawex_api::typed::{self, Task};
use tokio_util::sync::CancellationToken;

use crate::error::{HandlerError, SandboxError};
use crate::input::TaskInput;
use crate::Sandbox;

type HandlerFn =
    dyn Fn(TaskInput) -> BoxFuture<'static, Result<Bytes, HandlerError>> + Send + Sync + 'static;

/// Handlers by name: what a pod can run.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<HandlerFn>>,
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("HandlerRegistry")
            .field("handlers", &names)
            .finish()
    }
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` under `name`.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateHandler`] if the name is taken.
    pub fn register<F, Fut>(&mut self, name: &str, handler: F) -> Result<&mut Self, SandboxError>
    where
        F: Fn(TaskInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
    {
        if self.handlers.contains_key(name) {
            return Err(SandboxError::DuplicateHandler(name.to_owned()));
        }
        let f: Arc<HandlerFn> = Arc::new(move |input| handler(input).boxed());
        self.handlers.insert(name.to_owned(), f);
        Ok(self)
    }

    /// Registers the handler of the typed task `T` under [`Task::HANDLER`]: it gets the
    /// payload decoded as a `T` (and the attempt's input) and returns a `T::Output`, which
    /// goes back as JSON.
    ///
    /// A payload that is not a `T` fails the attempt for good (retrying cannot fix it), with
    /// an error that names the task and the field: `task 0190… (resize): the payload is not
    /// a Resize: size.width: invalid type: string "wide", expected u32 at line 1 column 27`.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateHandler`] if the name is taken.
    pub fn register_task<T, F, Fut>(&mut self, handler: F) -> Result<&mut Self, SandboxError>
    where
        T: Task,
        F: Fn(T, TaskInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T::Output, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register(T::HANDLER, move |input: TaskInput| {
            let handler = Arc::clone(&handler);
            async move {
                let task: T = typed::decode(&input.payload).map_err(|e| {
                    HandlerError::permanent(format!(
                        "task {} ({}): the payload is not a {}: {e}",
                        input.task,
                        T::HANDLER,
                        typed::short_type_name::<T>()
                    ))
                })?;
                let id = input.task;
                let output = handler(task, input).await?;
                typed::encode(&output).map_err(|e| {
                    HandlerError::permanent(format!("task {id} ({}): {e}", T::HANDLER))
                })
            }
        })
    }

    /// True if a handler of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Names of all registered handlers, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    fn get(&self, name: &str) -> Option<&Arc<HandlerFn>> {
        self.handlers.get(name)
    }
}

/// Runs handlers inside the pod's own process: the fastest sandbox, for small tasks.
/// A panic fails the attempt, never the pod.
#[derive(Debug, Clone)]
pub struct InProcess {
    registry: Arc<HandlerRegistry>,
}

impl InProcess {
    /// A sandbox running the handlers of `registry`.
    pub fn new(registry: HandlerRegistry) -> Self {
        InProcess {
            registry: Arc::new(registry),
        }
    }

    /// The handlers it can run.
    pub fn registry(&self) -> &HandlerRegistry {
        &self.registry
    }
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[async_trait]
impl Sandbox for InProcess {
    fn name(&self) -> &'static str {
        "in-process"
    }

    async fn run(
        &self,
        input: TaskInput,
        cancel: CancellationToken,
    ) -> Result<Bytes, SandboxError> {
        let handler = self
            .registry
            .get(&input.handler)
            .ok_or_else(|| SandboxError::UnknownHandler(input.handler.clone()))?;
        let timeout = input.limits.timeout;
        // Building the future runs user code too, so it is guarded like polling it.
        let future = std::panic::catch_unwind(AssertUnwindSafe(|| handler(input)))
            .map_err(|p| SandboxError::Panicked(panic_message(p)))?;
        let guarded = AssertUnwindSafe(future).catch_unwind();
        let finished = async {
            match timeout {
                Some(limit) => tokio::time::timeout(limit, guarded)
                    .await
                    .map_err(|_| SandboxError::TimedOut(limit)),
                None => Ok(guarded.await),
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(SandboxError::Cancelled),
            r = finished => match r? {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(e)) => Err(SandboxError::Handler(e)),
                Err(p) => Err(SandboxError::Panicked(panic_message(p))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mawex_api::Limits;

    use super::*;

    fn sandbox() -> InProcess {
        let mut r = HandlerRegistry::new();
        r.register("echo", |i: TaskInput| async move { Ok(i.payload) })
            .unwrap()
            .register("fail", |_| async { Err(HandlerError::new("bad input")) })
            .unwrap()
            .register("panic", |_| async { panic!("boom") })
            .unwrap()
            .register("sleep", |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Bytes::new())
            })
            .unwrap();
        InProcess::new(r)
    }

    async fn run(input: TaskInput) -> Result<Bytes, SandboxError> {
        sandbox().run(input, CancellationToken::new()).await
    }

    #[tokio::test]
    async fn outcomes_are_typed() {
        assert_eq!(run(TaskInput::for_test("echo", "x")).await.unwrap(), "x");
        assert_eq!(
            run(TaskInput::for_test("fail", "")).await,
            Err(SandboxError::Handler(HandlerError::new("bad input")))
        );
        assert_eq!(
            run(TaskInput::for_test("panic", "")).await,
            Err(SandboxError::Panicked("boom".into()))
        );
        assert_eq!(
            run(TaskInput::for_test("nope", "")).await,
            Err(SandboxError::UnknownHandler("nope".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_and_cancel_stop_the_handler() {
        let mut input = TaskInput::for_test("sleep", "");
        input.limits = Limits::default().with_timeout(Duration::from_millis(50));
        assert_eq!(
            run(input).await,
            Err(SandboxError::TimedOut(Duration::from_millis(50)))
        );

        let cancel = CancellationToken::new();
        let s = sandbox();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { s.run(TaskInput::for_test("sleep", ""), cancel).await }
        });
        cancel.cancel();
        assert_eq!(task.await.unwrap(), Err(SandboxError::Cancelled));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut r = HandlerRegistry::new();
        r.register("a", |_| async { Ok(Bytes::new()) }).unwrap();
        let dup = r.register("a", |_| async { Ok(Bytes::new()) });
        assert!(matches!(dup, Err(SandboxError::DuplicateHandler(n)) if n == "a"));
        assert_eq!(r.names(), vec!["a"]);
    }
}

#[cfg(all(test, feature = "testing"))]
mod conformance {
    use super::*;

    #[tokio::test]
    async fn the_in_process_sandbox_passes_the_conformance_suite() {
        let mut r = HandlerRegistry::new();
        r.register("echo", |i: TaskInput| async move { Ok(i.payload) })
            .unwrap()
            .register("fail", |_| async { Err(HandlerError::new("no")) })
            .unwrap()
            .register("crash", |_| async { panic!("crash") })
            .unwrap()
            .register("sleep", |_| async {
                std::future::pending::<()>().await;
                Ok(Bytes::new())
            })
            .unwrap();
        crate::testing::sandbox_suite(&InProcess::new(r), crate::testing::Kind::InProcess).await;
    }
}

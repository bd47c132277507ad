//! Typed tasks: a payload type that names its handler and its output type.
//!
//! The raw path (a handler name and `Bytes`) stays for clients in other languages; the typed
//! path is a layer over it. A typed payload and output travel as JSON ([`encode`],
//! [`decode`]), so a client in any language can submit a typed task or read its output.
//!
//! ```
//! # use mawex_api as mawex;
//! use mawex::{GroupName, Task, TaskSpec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { path: String, width: u32 }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Thumbnail { path: String, bytes: u64 }
//!
//! impl Task for Resize {
//!     const HANDLER: &'static str = "resize";
//!     type Output = Thumbnail;
//! }
//!
//! let group = GroupName::new("images").unwrap();
//! let spec = TaskSpec::typed(group, &Resize { path: "cat.png".into(), width: 64 }).unwrap();
//! assert_eq!(spec.handler, "resize");
//! assert_eq!(&spec.payload[..], br#"{"path":"cat.png","width":64}"#);
//! ```

use std::future::Future;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;
use crate::failure::{ErrorKind, TaskError};
use crate::ids::{GroupName, TaskId};
use crate::proxy::{MasterProxy, SubmitAck};
use crate::task::{Outcome, TaskResult, TaskSpec};

/// A kind of task: its payload is `Self`, its handler is [`Task::HANDLER`], and a successful
/// run returns a [`Task::Output`].
///
/// Register the handler with `HandlerRegistry::register_task` on the pods, submit with
/// [`TaskSpec::typed`] or [`TypedProxy::submit_task`], read the output with
/// [`TypedProxy::await_output`] or [`TaskResult::output`].
pub trait Task: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The handler that runs tasks of this type.
    const HANDLER: &'static str;
    /// What the handler returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

/// Encodes a typed payload or output as JSON.
///
/// # Errors
/// [`ApiError::InvalidArgument`] naming the type, when `value` cannot be represented (a map
/// with non-string keys, say).
pub fn encode<V: Serialize>(value: &V) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        ApiError::InvalidArgument(format!(
            "{} does not encode as JSON: {e}",
            std::any::type_name::<V>()
        ))
    })
}

/// Decodes JSON into `V`; the error names the path of the field that did not fit
/// (`size.width: invalid type: string "wide", expected u32 at line 1 column 27`).
///
/// # Errors
/// The decoding error, as text.
pub fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, String> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value: V = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    json.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// The short name of a type, for messages (`app::Resize` → `Resize`).
pub fn short_type_name<V>() -> &'static str {
    let full = std::any::type_name::<V>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl TaskSpec {
    /// A task of type `T` in `group`: handler [`Task::HANDLER`], payload `task` as JSON.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] if `task` does not encode.
    pub fn typed<T: Task>(group: GroupName, task: &T) -> Result<TaskSpec, ApiError> {
        Ok(TaskSpec::new(group, T::HANDLER, encode(task)?))
    }
}

impl TaskResult {
    /// The output of a task of type `T`.
    ///
    /// # Errors
    /// [`ApiError::TaskFailed`] with the last attempt's error if the task failed (kind
    /// `Cancelled` if it was cancelled); [`ApiError::Decode`] naming the task and the field if
    /// the output is not a `T::Output`.
    pub fn output<T: Task>(&self) -> Result<T::Output, ApiError> {
        match &self.outcome {
            Outcome::Succeeded(bytes) => decode(bytes).map_err(|e| {
                ApiError::Decode(format!(
                    "the output of task {} ({}) is not a {}: {e}",
                    self.id,
                    T::HANDLER,
                    short_type_name::<T::Output>()
                ))
            }),
            Outcome::Failed(error) => Err(ApiError::TaskFailed(error.clone())),
            Outcome::Cancelled => Err(ApiError::TaskFailed(TaskError::new(
                ErrorKind::Cancelled,
                format!("task {} was cancelled", self.id),
            ))),
        }
    }
}

/// A submitted task of type `T`: its id, and the type its output decodes as.
pub struct TaskHandle<T> {
    /// What the master answered.
    pub ack: SubmitAck,
    task: PhantomData<fn() -> T>,
}

impl<T> TaskHandle<T> {
    /// The id of the task that stands for the submit (see [`SubmitAck::id`]).
    pub fn id(&self) -> TaskId {
        self.ack.id
    }
}

impl<T> std::fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("type", &short_type_name::<T>())
            .field("ack", &self.ack)
            .finish()
    }
}

impl<T> Clone for TaskHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for TaskHandle<T> {}

/// Typed calls on any [`MasterProxy`] (local or remote): submit a [`Task`], wait for its
/// output.
///
/// ```no_run
/// # use mawex_api::{GroupName, MasterProxy, Task, TypedProxy};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { width: u32 }
/// # impl Task for Resize { const HANDLER: &'static str = "resize"; type Output = u64; }
/// # async fn demo(proxy: &dyn MasterProxy) -> Result<(), mawex_api::ApiError> {
/// let group = GroupName::new("images")?;
/// let handle = proxy.submit_task(group, &Resize { width: 64 }).await?;
/// let bytes: u64 = proxy.await_output(handle).await?;
/// # Ok(()) }
/// ```
pub trait TypedProxy {
    /// Submits `task` to `group`.
    ///
    /// # Errors
    /// As [`MasterProxy::submit`], and `InvalidArgument` if `task` does not encode.
    fn submit_task<T: Task>(
        &self,
        group: GroupName,
        task: &T,
    ) -> impl Future<Output = Result<TaskHandle<T>, ApiError>> + Send;

    /// Waits for the task's output.
    ///
    /// # Errors
    /// As [`MasterProxy::await_result`] and [`TaskResult::output`].
    fn await_output<T: Task>(
        &self,
        handle: TaskHandle<T>,
    ) -> impl Future<Output = Result<T::Output, ApiError>> + Send;

    /// Submits `task` and waits for its output.
    ///
    /// # Errors
    /// As [`TypedProxy::submit_task`] and [`TypedProxy::await_output`].
    fn run_task<T: Task>(
        &self,
        group: GroupName,
        task: &T,
    ) -> impl Future<Output = Result<T::Output, ApiError>> + Send;
}

impl<P: MasterProxy + ?Sized> TypedProxy for P {
    fn submit_task<T: Task>(
        &self,
        group: GroupName,
        task: &T,
    ) -> impl Future<Output = Result<TaskHandle<T>, ApiError>> + Send {
        let spec = TaskSpec::typed(group, task);
        async move {
            let ack = self.submit(spec?).await?;
            Ok(TaskHandle {
                ack,
                task: PhantomData,
            })
        }
    }

    async fn await_output<T: Task>(&self, handle: TaskHandle<T>) -> Result<T::Output, ApiError> {
        self.await_result(handle.id()).await?.output::<T>()
    }

    fn run_task<T: Task>(
        &self,
        group: GroupName,
        task: &T,
    ) -> impl Future<Output = Result<T::Output, ApiError>> + Send {
        let submitted = self.submit_task(group, task);
        async move { self.await_output(submitted.await?).await }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::{Attempt, Timestamp};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Size {
        width: u32,
        height: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Resize {
        path: String,
        size: Size,
    }

    impl Task for Resize {
        const HANDLER: &'static str = "resize";
        type Output = Size;
    }

    fn result(outcome: Outcome) -> TaskResult {
        TaskResult::new(
            TaskId::new(),
            GroupName::new("g").expect("valid"),
            Attempt(1),
            outcome,
            Timestamp(1),
            1,
        )
    }

    #[test]
    fn a_typed_spec_names_its_handler_and_round_trips() {
        let task = Resize {
            path: "a.png".into(),
            size: Size {
                width: 3,
                height: 4,
            },
        };
        let spec = TaskSpec::typed(GroupName::new("g").expect("valid"), &task).expect("encodes");
        assert_eq!(spec.handler, "resize");
        assert_eq!(decode::<Resize>(&spec.payload), Ok(task));
    }

    #[test]
    fn decode_errors_name_the_field() {
        let err = decode::<Resize>(br#"{"path":"a","size":{"width":"wide","height":1}}"#)
            .expect_err("a string is not a u32");
        assert!(err.starts_with("size.width: invalid type: string"), "{err}");
        let err = decode::<Resize>(br#"{"path":"a"}"#).expect_err("size is missing");
        assert!(err.contains("missing field `size`"), "{err}");
        let err = decode::<Resize>(br#"{"path":"a","size":{"width":1,"height":1}} x"#)
            .expect_err("trailing bytes");
        assert!(err.contains("trailing characters"), "{err}");
    }

    #[test]
    fn outputs_decode_or_say_why_not() {
        let ok = result(Outcome::Succeeded(
            br#"{"width":1,"height":2}"#.as_slice().into(),
        ));
        assert_eq!(
            ok.output::<Resize>(),
            Ok(Size {
                width: 1,
                height: 2
            })
        );
        let bad = result(Outcome::Succeeded(br#"{"width":1}"#.as_slice().into()));
        match bad.output::<Resize>() {
            Err(ApiError::Decode(m)) => {
                assert!(m.contains(&bad.id.to_string()), "{m}");
                assert!(m.contains("resize") && m.contains("Size"), "{m}");
                assert!(m.contains("missing field `height`"), "{m}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        let error = TaskError::new(ErrorKind::Handler, "no such file");
        assert_eq!(
            result(Outcome::Failed(error.clone())).output::<Resize>(),
            Err(ApiError::TaskFailed(error))
        );
        assert!(matches!(
            result(Outcome::Cancelled).output::<Resize>(),
            Err(ApiError::TaskFailed(e)) if e.kind == ErrorKind::Cancelled
        ));
    }
}

//! The sandboxes a pod offers, and which one runs a task.

use std::collections::BTreeMap;
use std::sync::Arc;

use mawex_api::GroupName;

use crate::error::SandboxError;
use crate::Sandbox;

/// The sandboxes of a pod: a default, named others, and per-group defaults among them.
///
/// A task runs in the sandbox it names, else in its group's default, else in the pod's
/// default. A task naming a sandbox the pod does not offer fails at once, for good.
#[derive(Clone)]
pub struct SandboxSet {
    default: Arc<dyn Sandbox>,
    named: BTreeMap<String, Arc<dyn Sandbox>>,
    by_group: BTreeMap<GroupName, String>,
}

impl std::fmt::Debug for SandboxSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxSet")
            .field("default", &self.default.name())
            .field("named", &self.named.keys().collect::<Vec<_>>())
            .field("by_group", &self.by_group)
            .finish()
    }
}

impl SandboxSet {
    /// A set with one sandbox for everything.
    pub fn new(default: Arc<dyn Sandbox>) -> Self {
        SandboxSet {
            default,
            named: BTreeMap::new(),
            by_group: BTreeMap::new(),
        }
    }

    /// Offers `sandbox` under `name`.
    pub fn with(mut self, name: impl Into<String>, sandbox: Arc<dyn Sandbox>) -> Self {
        self.named.insert(name.into(), sandbox);
        self
    }

    /// Runs `group`'s tasks in the sandbox named `name` unless they name another.
    ///
    /// # Errors
    /// [`SandboxError::UnknownSandbox`] if no sandbox has that name.
    pub fn group_default(mut self, group: GroupName, name: &str) -> Result<Self, SandboxError> {
        if !self.named.contains_key(name) {
            return Err(SandboxError::UnknownSandbox(name.to_owned()));
        }
        self.by_group.insert(group, name.to_owned());
        Ok(self)
    }

    /// The sandbox for a task of `group` that names `requested`.
    ///
    /// # Errors
    /// [`SandboxError::UnknownSandbox`] for a name the pod does not offer.
    pub fn select(
        &self,
        group: &GroupName,
        requested: Option<&str>,
    ) -> Result<&Arc<dyn Sandbox>, SandboxError> {
        let name = requested.or_else(|| self.by_group.get(group).map(String::as_str));
        match name {
            Some(name) => self
                .named
                .get(name)
                .ok_or_else(|| SandboxError::UnknownSandbox(name.to_owned())),
            None => Ok(&self.default),
        }
    }
}

impl From<Arc<dyn Sandbox>> for SandboxSet {
    fn from(default: Arc<dyn Sandbox>) -> Self {
        SandboxSet::new(default)
    }
}

impl<S: Sandbox> From<Arc<S>> for SandboxSet {
    fn from(default: Arc<S>) -> Self {
        SandboxSet::new(default)
    }
}

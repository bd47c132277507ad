//! Broadcasts: one task run once on every pod of a group, propagated from pod to pod.
//!
//! Pushing an artifact from one origin to N pods takes N/c rounds; letting every pod that
//! has finished serve others takes about log_(c+1) N. A broadcast's targets pull from a
//! **source**: the origin or a pod that already finished, chosen by the [`Strategy`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::failure::TaskError;
use crate::ids::{GroupName, PodId, TaskId};
use crate::task::{Limits, RetryPolicy};
use crate::time::Timestamp;

/// Environment variable: the pod to pull from (`@origin` for the origin).
pub const SOURCE_POD_ENV: &str = "MAWEX_SOURCE_POD";
/// Environment variable: the source's advertised address (the origin's for the origin).
pub const SOURCE_ADDR_ENV: &str = "MAWEX_SOURCE_ADDR";
/// Environment variable: the broadcast's app.
pub const APP_ENV: &str = "MAWEX_BROADCAST_APP";
/// Environment variable: the version being applied.
pub const VERSION_ENV: &str = "MAWEX_BROADCAST_VERSION";
/// What [`SOURCE_POD_ENV`] says when the source is the origin (not a valid pod id).
pub const ORIGIN: &str = "@origin";
/// Environment variable (host broadcasts): the host this step brings the version to.
pub const TARGET_HOST_ENV: &str = "MAWEX_TARGET_HOST";
/// Environment variable (host broadcasts): the host to pull from, or `@origin`.
pub const SOURCE_HOST_ENV: &str = "MAWEX_SOURCE_HOST";

/// A broadcast's number, given by the master in firing order.
pub type BroadcastId = u64;

/// How targets find their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Strategy {
    /// A target starts as soon as some finished pod (or the origin) has a free pull slot; no
    /// source serves more than `per_source` pulls at once.
    Pull {
        /// Concurrent pulls one source serves at most.
        per_source: u32,
    },
    /// A fixed breadth-first tree over the sorted targets: target `i` pulls from target
    /// `⌊i/k⌋ − 1`, or from the origin for the first `k`, once that one finished.
    Tree {
        /// Children per node.
        branches: u32,
    },
}

/// Where a target pulls from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// Whoever fired the broadcast.
    Origin,
    /// A pod that finished.
    Pod(PodId),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Origin => f.write_str(ORIGIN),
            Source::Pod(pod) => pod.fmt(f),
        }
    }
}

/// Which pods of the group are targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetFilter {
    /// Every label listed must be on the pod with this value.
    pub labels: BTreeMap<String, String>,
    /// A glob over pod ids (`*` any run of characters, `?` one); `None`: all.
    pub name_pattern: Option<String>,
}

impl TargetFilter {
    /// Does a pod with `id` and `labels` match?
    pub fn matches(&self, id: &PodId, labels: &BTreeMap<String, String>) -> bool {
        pod_matches(&self.labels, self.name_pattern.as_deref(), id, labels)
    }
}

/// Does a pod with `id` and `labels` carry every one of `required` labels and, if there is a
/// `name_pattern` (`*` and `?` globs), match it? The rule of [`TargetFilter::matches`], for
/// other representations of a filter (the journal's own, say).
pub fn pod_matches(
    required: &BTreeMap<String, String>,
    name_pattern: Option<&str>,
    id: &PodId,
    labels: &BTreeMap<String, String>,
) -> bool {
    required.iter().all(|(k, v)| labels.get(k) == Some(v))
        && name_pattern.is_none_or(|p| glob_match(p.as_bytes(), id.as_str().as_bytes()))
}

/// Does `text` match `pattern` (`*` any run of characters, `?` one)? Linear in practice and
/// at most O(len(pattern) × len(text)): patterns and texts both come from the wire, so no
/// backtracking over every star.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    glob_match(pattern.as_bytes(), text.as_bytes())
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last star was, and where its match in `text` currently ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last star take one more character and try again from there.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// What to broadcast, where, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BroadcastSpec {
    /// What is deployed; versions and the lock are per app.
    pub app: String,
    /// The version; `None`: the next after the app's last (`v0.3.1` → `v0.3.2`,
    /// `foo` → `foo-1`, first `1`).
    pub version: Option<String>,
    /// The group whose pods are the targets.
    pub group: GroupName,
    /// Which of them.
    pub filter: TargetFilter,
    /// The handler each target runs.
    pub handler: String,
    /// Its payload.
    pub payload: Bytes,
    /// How targets find sources.
    pub strategy: Strategy,
    /// What targets pulling from the origin get as `MAWEX_SOURCE_ADDR`.
    pub origin_address: String,
    /// Retries of a failed target (each retry from another source when there is one);
    /// `None`: the master's default.
    pub retry: Option<RetryPolicy>,
    /// Limits of each target's attempts.
    pub limits: Limits,
    /// The sandbox targets run in, by name; `None`: the pod's default for the group.
    pub sandbox: Option<String>,
    /// The app's lock expires this long after the fire, if the broadcast has not finished.
    pub lock_ttl: Duration,
    /// Plain hosts instead of pods (grifork's standalone mode): the targets are these names
    /// (ssh aliases, say: 1 to 128 of `A-Z a-z 0-9 - _ . : /`), each step runs on some pod
    /// of `group` (typically in an ssh sandbox) with [`TARGET_HOST_ENV`] and
    /// [`SOURCE_HOST_ENV`] set, and `filter` is not used. Empty: the group's pods.
    pub hosts: Vec<String>,
}

/// The longest app name or version.
const MAX_NAME: usize = 128;

impl BroadcastSpec {
    /// Broadcasts `handler` to `group` for `app`, pulling with 5 pulls per source.
    pub fn new(app: impl Into<String>, group: GroupName, handler: impl Into<String>) -> Self {
        BroadcastSpec {
            app: app.into(),
            version: None,
            group,
            filter: TargetFilter::default(),
            handler: handler.into(),
            payload: Bytes::new(),
            strategy: Strategy::Pull { per_source: 5 },
            origin_address: String::new(),
            retry: None,
            limits: Limits::default(),
            sandbox: None,
            lock_ttl: Duration::from_secs(3600),
            hosts: Vec::new(),
        }
    }

    /// The same broadcast to plain `hosts` instead of the group's pods.
    pub fn with_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// The same broadcast with another strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The same broadcast of `version`.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The same broadcast with `payload`.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// The same broadcast, the origin reachable at `address`.
    pub fn with_origin_address(mut self, address: impl Into<String>) -> Self {
        self.origin_address = address.into();
        self
    }

    /// The same broadcast with its own retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The same broadcast to the pods `filter` selects.
    pub fn with_filter(mut self, filter: TargetFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] naming the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::InvalidArgument(m));
        for (what, value) in [("app", Some(&self.app)), ("version", self.version.as_ref())] {
            let Some(value) = value else { continue };
            if value.is_empty() || value.len() > MAX_NAME {
                return bad(format!(
                    "broadcast {what} must be 1 to {MAX_NAME} bytes long"
                ));
            }
            if let Some(c) = value
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')))
            {
                return bad(format!(
                    "broadcast {what} {value:?} contains {c:?}; use ASCII letters, digits and - _ . +"
                ));
            }
        }
        if self.handler.is_empty() {
            return bad("broadcast handler must not be empty".into());
        }
        match self.strategy {
            Strategy::Pull { per_source: 0 } => {
                return bad("pull strategy: per_source must be at least 1".into())
            }
            Strategy::Tree { branches: 0 } => {
                return bad("tree strategy: branches must be at least 1".into())
            }
            _ => {}
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if self.lock_ttl.is_zero() {
            return bad(
                "broadcast lock_ttl must be positive (it bounds how long a stuck \
                        broadcast blocks the next fire)"
                    .into(),
            );
        }
        for host in &self.hosts {
            PodId::new(host).map_err(|e| match e {
                ApiError::InvalidArgument(m) => {
                    ApiError::InvalidArgument(format!("broadcast host {host:?}: {m}"))
                }
                other => other,
            })?;
            if host.starts_with('-') {
                return bad(format!(
                    "broadcast host {host:?} starts with '-', which ssh would read as an option"
                ));
            }
        }
        Ok(())
    }
}

/// The longest app name or version, in bytes.
pub const MAX_VERSION_LEN: usize = MAX_NAME;

/// The version after `last`: the trailing number incremented in decimal, however long
/// (`v0.3.1` → `v0.3.2`, `build-9` → `build-10`, `r099` → `r100`), or `-1` appended
/// (`foo` → `foo-1`); `1` when there is none. The result may be one byte longer than
/// `last`; the master refuses a fire whose next version would exceed [`MAX_VERSION_LEN`].
pub fn next_version(last: Option<&str>) -> String {
    let Some(last) = last else {
        return "1".to_owned();
    };
    let digits = last.len() - last.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return format!("{last}-1");
    }
    let (head, number) = last.split_at(last.len() - digits);
    // Decimal increment on the digits themselves: no integer type to overflow.
    let mut number = number.as_bytes().to_vec();
    let mut carry = true;
    for digit in number.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            carry = false;
            break;
        }
    }
    if carry {
        number.insert(0, b'1');
    }
    format!("{head}{}", String::from_utf8_lossy(&number))
}

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TargetState {
    /// Waiting for a source (or its parent), a slot on its pod, or a retry's time.
    Waiting,
    /// Pulling now.
    Running,
    /// Applied the version.
    Done,
    /// Failed for good (after its retries).
    Failed,
    /// Had the version already: nothing to do.
    AlreadyApplied,
    /// The broadcast was aborted before it ran.
    Cancelled,
}

impl TargetState {
    /// No further change will come.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TargetState::Waiting | TargetState::Running)
    }

    /// Its name, as the command line and the REST API spell it: `waiting`, `running`,
    /// `done`, `failed`, `already-applied`, `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Running => "running",
            TargetState::Done => "done",
            TargetState::Failed => "failed",
            TargetState::AlreadyApplied => "already-applied",
            TargetState::Cancelled => "cancelled",
        }
    }
}

/// One target as the master records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    /// The pod.
    pub pod: PodId,
    /// The task that runs on it; `None` if it had the version already.
    pub task: Option<TaskId>,
    /// The version of the app the pod has now (its last applied), if any.
    pub version: Option<String>,
    /// Where it stands.
    pub state: TargetState,
    /// The source of its current or last attempt.
    pub source: Option<Source>,
    /// Attempts so far.
    pub attempts: u32,
    /// When its current or last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// The last error, if it failed.
    pub error: Option<TaskError>,
}

impl TargetView {
    /// From start to finish of the attempt that ended it.
    pub fn duration(&self) -> Option<Duration> {
        Some(self.finished_at?.saturating_since(self.started_at?))
    }
}

/// A broadcast and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastView {
    /// Its number.
    pub id: BroadcastId,
    /// The app.
    pub app: String,
    /// The version it applies.
    pub version: String,
    /// The group.
    pub group: GroupName,
    /// The strategy.
    pub strategy: Strategy,
    /// When it was fired.
    pub fired_at: Timestamp,
    /// When its last target ended, if all have.
    pub finished_at: Option<Timestamp>,
    /// Aborted by an admin (or superseded after its lock expired).
    pub aborted: bool,
    /// Its targets, in pod order.
    pub targets: Vec<TargetView>,
}

impl BroadcastView {
    /// Targets that ended (done, failed, already applied or cancelled).
    pub fn ended(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.state.is_terminal())
            .count()
    }

    /// Targets that have the version now (done or already applied).
    pub fn done(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| matches!(t.state, TargetState::Done | TargetState::AlreadyApplied))
            .count()
    }

    /// All targets ended.
    pub fn is_finished(&self) -> bool {
        self.ended() == self.targets.len()
    }
}

/// Filters and pagination of `list_broadcasts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BroadcastQuery {
    /// Only broadcasts of this app.
    pub app: Option<String>,
    /// Resume after this broadcast (the previous page's `next`).
    pub after: Option<BroadcastId>,
    /// Page size, 1 to [`MAX_LIST_LIMIT`](crate::MAX_LIST_LIMIT). Default: 100. A page also
    /// ends before it passes [`MAX_LIST_PAGE_BYTES`](crate::MAX_LIST_PAGE_BYTES).
    pub limit: usize,
}

impl Default for BroadcastQuery {
    fn default() -> Self {
        BroadcastQuery {
            app: None,
            after: None,
            limit: 100,
        }
    }
}

impl BroadcastQuery {
    /// Only broadcasts of `app`.
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }

    /// Resume after broadcast `id`.
    pub fn after(mut self, id: BroadcastId) -> Self {
        self.after = Some(id);
        self
    }

    /// Page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Checks the page size.
    ///
    /// # Errors
    /// `InvalidArgument` for a limit of 0 or above [`MAX_LIST_LIMIT`](crate::MAX_LIST_LIMIT).
    pub fn validate(&self) -> Result<(), ApiError> {
        crate::proxy::check_page_limit("list_broadcasts", self.limit)
    }
}

/// One page of `list_broadcasts`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BroadcastPage {
    /// The broadcasts of this page.
    pub broadcasts: Vec<BroadcastView>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<BroadcastId>,
}

impl BroadcastPage {
    /// A page of `broadcasts` followed by `next`.
    pub fn new(broadcasts: Vec<BroadcastView>, next: Option<BroadcastId>) -> Self {
        BroadcastPage { broadcasts, next }
    }
}

/// The lock an app's running broadcast holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastLock {
    /// The app.
    pub app: String,
    /// The broadcast holding it.
    pub broadcast: BroadcastId,
    /// Its version.
    pub version: String,
    /// Since when.
    pub since: Timestamp,
    /// When another fire may take it over anyway.
    pub expires_at: Timestamp,
}

/// One target of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTarget {
    /// The pod.
    pub pod: PodId,
    /// Its wave (1: pulls from the origin), if every pull took the same time.
    pub wave: u32,
    /// Its source in the plan.
    pub source: Source,
}

/// What a fire would do, computed without doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastPlan {
    /// The app.
    pub app: String,
    /// The version it would apply.
    pub version: String,
    /// The strategy.
    pub strategy: Strategy,
    /// Targets that would run, in wave order.
    pub targets: Vec<PlannedTarget>,
    /// Pods that already have the version.
    pub already_applied: Vec<PodId>,
    /// Waves in all.
    pub waves: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up() {
        assert_eq!(next_version(None), "1");
        assert_eq!(next_version(Some("1")), "2");
        assert_eq!(next_version(Some("v0.3.1")), "v0.3.2");
        assert_eq!(next_version(Some("v0.3.9")), "v0.3.10");
        assert_eq!(next_version(Some("foo")), "foo-1");
        assert_eq!(next_version(Some("foo-1")), "foo-2");
        assert_eq!(next_version(Some("r099")), "r100");
        assert_eq!(next_version(Some("9")), "10");
    }

    #[test]
    fn versions_past_every_integer_type_still_count_up() {
        let max = u128::MAX.to_string();
        assert_eq!(
            next_version(Some(&max)),
            "340282366920938463463374607431768211456"
        );
        let long = "9".repeat(127);
        assert_eq!(next_version(Some(&long)), format!("1{}", "0".repeat(127)));
    }

    #[test]
    fn hosts_that_look_like_options_are_refused() {
        let group = crate::GroupName::new("g").expect("valid");
        let spec = BroadcastSpec::new("site", group, "sync");
        assert!(spec.clone().with_hosts(["h1", "web-2"]).validate().is_ok());
        for bad in ["-F/tmp/x", "-E/var/log/x", "-oProxyCommand"] {
            match spec.clone().with_hosts([bad]).validate() {
                Err(ApiError::InvalidArgument(m)) => assert!(m.contains("option"), "{m}"),
                other => panic!("{bad} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn globs_match_without_backtracking_blowup() {
        for (pattern, text, expected) in [
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*c", "abcbc", true),
            ("a*c", "abcb", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b*", "xaybz", true),
            ("*a*b*", "xbya", false),
            ("builder-*", "builder-7", true),
            ("builder-*", "db-1", false),
            ("**", "x", true),
        ] {
            assert_eq!(
                glob_matches(pattern, text),
                expected,
                "{pattern:?} ~ {text:?}"
            );
        }
        // The recursive matcher took exponential time on this; now it is immediate.
        let pattern = "*a".repeat(30) + "b";
        let text = "a".repeat(200);
        assert!(!glob_matches(&pattern, &text));
    }

    #[test]
    fn filters_match_labels_and_globs() {
        let pod = PodId::new("web-eu-3").expect("valid");
        let labels = BTreeMap::from([("zone".to_owned(), "eu".to_owned())]);
        let mut filter = TargetFilter::default();
        assert!(filter.matches(&pod, &labels));
        filter.name_pattern = Some("web-*-?".into());
        assert!(filter.matches(&pod, &labels));
        filter.labels.insert("zone".into(), "us".into());
        assert!(!filter.matches(&pod, &labels));
        filter.labels.clear();
        filter.name_pattern = Some("db-*".into());
        assert!(!filter.matches(&pod, &labels));
    }
}

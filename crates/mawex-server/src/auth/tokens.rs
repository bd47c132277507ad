//! Bearer tokens: what each may do, stored as the SHA-256 of its secret, loaded from a TOML
//! file and replaceable while serving.
//!
//! ```toml
//! [[token]]
//! id = "ci"                 # shown in logs; the secret never is
//! role = "client"           # client, admin, viewer, pod or peer
//! groups = ["builds"]       # optional: the groups it may use (client and pod tokens)
//! sha256 = "…64 hex digits…"
//!
//! [[token]]
//! id = "fleet-a"
//! role = "pod"
//! groups = ["builds"]
//! pods = ["builder-*"]      # optional: the pod ids it may register (`*` and `?` globs)
//! addresses = ["*.builders.internal:*"]  # optional: addresses its pods may advertise
//! max_pods = 50             # optional: pods it may have connected at once
//! sha256 = "…"
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mawex_api::{GroupName, PodId};
use ring::rand::SecureRandom;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::ServerError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Submit, get, await, list, stream and cancel tasks (of its groups, if it names any).
    Client,
    /// Everything a client may, and every other call of the client service: group settings,
    /// the failed queue, queue changes, schedules, broadcasts, locks.
    Admin,
    /// The pod link only, for the groups (and pod ids) it names.
    Pod,
    /// The Raft link between the masters of a cluster only (the services added with
    /// [`Server::add_service_for`](crate::Server::add_service_for) for this role).
    Peer,
    /// Reads everything a client or an admin may read (tasks, results, groups, pods, the
    /// failed queue, schedules, broadcasts, plans) and changes nothing: for dashboards and
    /// people on call.
    Viewer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Pod => "pod",
            Role::Peer => "peer",
            Role::Viewer => "viewer",
        })
    }
}

/// One token: its id, role, limits and the SHA-256 of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    id: String,
    role: Role,
    groups: Option<BTreeSet<GroupName>>,
    pods: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    max_pods: Option<u32>,
    sha256: [u8; 32],
}

/// The secret stays out of logs: only its id and limits show.
impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("groups", &self.groups)
            .field("pods", &self.pods)
            .field("addresses", &self.addresses)
            .field("max_pods", &self.max_pods)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    /// A token `id` of `role` whose secret is `secret` (hashed here; the secret is not kept).
    pub fn new(id: impl Into<String>, role: Role, secret: &str) -> Self {
        TokenEntry {
            id: id.into(),
            role,
            groups: None,
            pods: None,
            addresses: None,
            max_pods: None,
            sha256: sha256(secret),
        }
    }

    /// Limits the token to `groups` (client and pod tokens).
    pub fn groups(mut self, groups: impl IntoIterator<Item = GroupName>) -> Self {
        self.groups = Some(groups.into_iter().collect());
        self
    }

    /// Limits a pod token to the pod ids matching one of `patterns` (`*` and `?` globs).
    pub fn pods(mut self, patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.pods = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// Lets the pods of a pod token advertise addresses matching one of `patterns` (`*`
    /// and `?` globs over the whole address), besides the one they connect from.
    pub fn addresses(mut self, patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.addresses = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// Lets a pod token have at most `n` pods connected at once, so that one token cannot
    /// take every place of the master's `max_pods`.
    pub fn max_pods(mut self, n: u32) -> Self {
        self.max_pods = Some(n);
        self
    }

    /// How many pods a pod token may have connected at once, if limited.
    pub fn pod_limit(&self) -> Option<u32> {
        self.max_pods
    }

    /// May a pod of this token advertise `address` without connecting from it?
    pub fn allows_address(&self, address: &str) -> bool {
        self.addresses.as_ref().is_some_and(|patterns| {
            patterns
                .iter()
                .any(|p| mawex_api::broadcast::glob_matches(p, address))
        })
    }

    /// The id shown in logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What it may do.
    pub fn role(&self) -> Role {
        self.role
    }

    /// May it use `group`?
    pub fn allows_group(&self, group: &GroupName) -> bool {
        self.groups.as_ref().is_none_or(|g| g.contains(group))
    }

    /// The groups it is limited to, if any.
    pub fn limited_to(&self) -> Option<&BTreeSet<GroupName>> {
        self.groups.as_ref()
    }

    /// May a pod with this token register as `pod`?
    pub fn allows_pod(&self, pod: &PodId) -> bool {
        self.pods.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|p| mawex_api::broadcast::glob_matches(p, pod.as_str()))
        })
    }

    fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > 128 || self.id.chars().any(char::is_control) {
            return Err(format!(
                "token id {:?}: 1 to 128 characters, no control characters",
                self.id
            ));
        }
        if matches!(self.role, Role::Admin | Role::Peer | Role::Viewer) && self.groups.is_some() {
            return Err(format!(
                "token {}: {} {} token is not limited to groups",
                self.id,
                if self.role == Role::Admin { "an" } else { "a" },
                self.role
            ));
        }
        if self.role != Role::Pod
            && (self.pods.is_some() || self.addresses.is_some() || self.max_pods.is_some())
        {
            return Err(format!(
                "token {}: only pod tokens name pods, addresses and max_pods",
                self.id
            ));
        }
        Ok(())
    }
}

/// A set of tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Shared, so that a call's caller holds its token without copying it.
    entries: Vec<Arc<TokenEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLine {
    id: String,
    role: Role,
    groups: Option<Vec<String>>,
    pods: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    max_pods: Option<u32>,
    sha256: String,
}

impl Tokens {
    /// A set of `entries`.
    ///
    /// # Errors
    /// [`ServerError::Tokens`] for a bad entry or two entries with one id or one secret.
    pub fn new(entries: impl IntoIterator<Item = TokenEntry>) -> Result<Self, ServerError> {
        let entries: Vec<TokenEntry> = entries.into_iter().collect();
        let mut ids = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for e in &entries {
            e.check().map_err(ServerError::Tokens)?;
            if !ids.insert(e.id.as_str()) {
                return Err(ServerError::Tokens(format!(
                    "token id {} is used twice",
                    e.id
                )));
            }
            if !hashes.insert(e.sha256) {
                return Err(ServerError::Tokens(format!(
                    "token {} has the secret of another token",
                    e.id
                )));
            }
        }
        Ok(Tokens {
            entries: entries.into_iter().map(Arc::new).collect(),
        })
    }

    /// Parses a token file (see the module docs).
    ///
    /// # Errors
    /// [`ServerError::Tokens`] saying which entry or line is wrong.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        let file: TokenFile =
            toml::from_str(text).map_err(|e| ServerError::Tokens(format!("token file: {e}")))?;
        let entries = file
            .token
            .into_iter()
            .map(|line| {
                let sha256 = parse_sha256(&line.sha256).ok_or_else(|| {
                    ServerError::Tokens(format!(
                        "token {}: sha256 must be 64 hex digits (the SHA-256 of the secret)",
                        line.id
                    ))
                })?;
                let groups = line
                    .groups
                    .map(|groups| {
                        groups
                            .into_iter()
                            .map(|g| {
                                GroupName::new(&g).map_err(|e| {
                                    ServerError::Tokens(format!(
                                        "token {}: group {g:?}: {e}",
                                        line.id
                                    ))
                                })
                            })
                            .collect::<Result<BTreeSet<_>, _>>()
                    })
                    .transpose()?;
                Ok(TokenEntry {
                    id: line.id,
                    role: line.role,
                    groups,
                    pods: line.pods,
                    addresses: line.addresses,
                    max_pods: line.max_pods,
                    sha256,
                })
            })
            .collect::<Result<Vec<_>, ServerError>>()?;
        Tokens::new(entries)
    }

    /// Reads and parses the token file at `path`.
    ///
    /// # Errors
    /// [`ServerError::Tokens`] naming the file.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Tokens(format!("{}: {e}", path.display())))?;
        Tokens::from_toml(&text).map_err(|e| match e {
            ServerError::Tokens(m) => ServerError::Tokens(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The entry whose secret is `secret`. Every entry is compared, each in constant time,
    /// so how long this takes says nothing about which tokens exist.
    pub fn find(&self, secret: &str) -> Option<&TokenEntry> {
        self.find_shared(secret).map(|entry| &**entry)
    }

    /// [`Tokens::find`], as the shared entry a caller keeps.
    pub(crate) fn find_shared(&self, secret: &str) -> Option<&Arc<TokenEntry>> {
        let presented = sha256(secret);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.sha256.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is none (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A new random secret (256 bits, hex, prefixed `mawex_`) and the line of a token file that
/// stores it, for `id` and `role`.
///
/// # Errors
/// [`ServerError::Tokens`] if the system has no random source.
pub fn generate_token(id: &str, role: Role) -> Result<(String, String), ServerError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ServerError::Tokens("no random source".into()))?;
    let secret = format!("mawex_{}", hex(&bytes));
    let line = format!(
        "[[token]]\nid = {id:?}\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        hex(&sha256(&secret))
    );
    Ok((secret, line))
}

/// The hex SHA-256 of `secret`, as a token file stores it.
pub fn hash_secret(secret: &str) -> String {
    hex(&sha256(secret))
}

fn sha256(secret: &str) -> [u8; 32] {
    sha256_bytes(secret.as_bytes())
}

fn sha256_bytes(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The tokens a server accepts: shared by every connection, replaceable while serving.
/// New calls are checked against the current set; open pod sessions and result streams of
/// a token that was removed or changed end. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenStore {
    current: Arc<watch::Sender<Arc<Tokens>>>,
}

impl TokenStore {
    /// A store holding `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        TokenStore {
            current: Arc::new(watch::Sender::new(Arc::new(tokens))),
        }
    }

    /// The tokens now.
    pub fn current(&self) -> Arc<Tokens> {
        self.current.borrow().clone()
    }

    /// Replaces the tokens; new calls are checked against `tokens`, and what a token no
    /// longer in it (or changed) opened ends.
    pub fn replace(&self, tokens: Tokens) {
        self.current.send_replace(Arc::new(tokens));
    }

    /// Resolves once `token` (as it is now) is no longer in the store.
    pub(crate) fn revoked(
        &self,
        token: Arc<TokenEntry>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut tokens = self.current.subscribe();
        async move {
            loop {
                if !tokens.borrow_and_update().entries.contains(&token) {
                    return;
                }
                if tokens.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Re-reads the token file at `path`; a file that does not parse leaves the tokens as
    /// they were.
    ///
    /// # Errors
    /// [`ServerError::Tokens`] saying what is wrong with the file.
    pub fn reload(&self, path: &Path) -> Result<usize, ServerError> {
        let tokens = Tokens::from_file(path)?;
        let n = tokens.len();
        self.replace(tokens);
        tracing::info!(target: "mawex::audit", path = %path.display(), tokens = n, "tokens reloaded");
        Ok(n)
    }

    /// Watches the token file at `path`, reloading it whenever its content changes (read
    /// every `every`, compared by hash: a rotated secret keeps the file's size, and mtimes
    /// can be coarse), until the returned task is aborted or the runtime ends. A file that
    /// does not parse is logged and the old tokens stay. Compares against the file as it is
    /// when this is called, so a change made just after loading is not missed.
    pub fn watch(&self, path: impl Into<PathBuf>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let path = path.into();
        let content = |path: &Path| std::fs::read(path).ok().map(|bytes| sha256_bytes(&bytes));
        let mut seen = content(&path);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = content(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                if let Err(e) = store.reload(&path) {
                    tracing::error!(target: "mawex::audit", error = %e, "token file not reloaded; the old tokens stay");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupName {
        GroupName::new(name).expect("valid")
    }

    #[test]
    fn a_token_file_parses_and_finds_tokens_by_secret() {
        let text = format!(
            r#"
            [[token]]
            id = "ci"
            role = "client"
            groups = ["builds"]
            sha256 = "{}"

            [[token]]
            id = "fleet"
            role = "pod"
            pods = ["builder-*"]
            sha256 = "{}"
            "#,
            hash_secret("s3cret"),
            hash_secret("p0d")
        );
        let tokens = Tokens::from_toml(&text).expect("parses");
        assert_eq!(tokens.len(), 2);
        let ci = tokens.find("s3cret").expect("found");
        assert_eq!((ci.id(), ci.role()), ("ci", Role::Client));
        assert!(ci.allows_group(&group("builds")));
        assert!(!ci.allows_group(&group("deploys")));
        let fleet = tokens.find("p0d").expect("found");
        assert!(fleet.allows_pod(&PodId::new("builder-7").expect("valid")));
        assert!(!fleet.allows_pod(&PodId::new("db-1").expect("valid")));
        assert!(tokens.find("S3CRET").is_none());
        assert!(tokens.find("").is_none());
        assert!(
            !format!("{ci:?}").contains(&hash_secret("s3cret")),
            "no hash in Debug"
        );
    }

    #[test]
    fn bad_token_files_say_what_is_wrong() {
        let cases = [
            ("[[token]]\nid = \"a\"\nrole = \"root\"\nsha256 = \"00\"", "role"),
            ("[[token]]\nid = \"a\"\nrole = \"client\"\nsha256 = \"00\"", "64 hex digits"),
            (
                &format!("[[token]]\nid = \"a\"\nrole = \"admin\"\ngroups = [\"g\"]\nsha256 = \"{}\"", hash_secret("x")),
                "admin token is not limited",
            ),
            (
                &format!("[[token]]\nid = \"m\"\nrole = \"peer\"\ngroups = [\"g\"]\nsha256 = \"{}\"", hash_secret("x")),
                "token m: a peer token is not limited",
            ),
            (
                &format!("[[token]]\nid = \"a\"\nrole = \"client\"\nsha256 = \"{0}\"\n[[token]]\nid = \"a\"\nrole = \"pod\"\nsha256 = \"{1}\"", hash_secret("x"), hash_secret("y")),
                "used twice",
            ),
            (
                &format!("[[token]]\nid = \"a\"\nrole = \"client\"\nsha256 = \"{0}\"\n[[token]]\nid = \"b\"\nrole = \"pod\"\nsha256 = \"{0}\"", hash_secret("x")),
                "secret of another token",
            ),
            ("[[token]]\nid = \"a\"\nrole = \"client\"\nsecret = \"x\"", "secret"),
        ];
        for (text, expected) in cases {
            let err = Tokens::from_toml(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn generated_tokens_are_found_by_their_secret() {
        let (secret, line) = generate_token("ops", Role::Admin).expect("random");
        assert!(secret.starts_with("mawex_") && secret.len() == 6 + 64);
        assert!(!line.contains(&secret));
        let tokens = Tokens::from_toml(&line).expect("the line parses");
        assert_eq!(tokens.find(&secret).map(TokenEntry::id), Some("ops"));
        let (other, _) = generate_token("ops", Role::Admin).expect("random");
        assert_ne!(secret, other);
    }
}

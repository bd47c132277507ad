//! Which disk a node is. A node that comes back with an empty disk under its old id has
//! forgotten its votes and its log: let in, it could vote twice in a term, or count for a
//! commit it no longer holds. So each disk draws an incarnation when its log is made
//! ([`SledLogStore::incarnation`]); a node's RPCs carry its id and incarnation, its answers
//! its incarnation, and each node remembers (durably, in its log store) the incarnation its
//! peers first came with. A peer that comes with another one is refused both ways, with an
//! error that says to join under a new id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use openraft::network::RaftNetworkFactory;
use tracing::{debug, error};

use crate::{MasterRaft, RaftStoreError, SledLogStore};

/// The metadata key of a request: the caller's `<id>:<incarnation>`.
pub(crate) const FROM_KEY: &str = "mawex-node";
/// The metadata key of a request: the `<id>:<incarnation>` the caller knows the callee by.
pub(crate) const TO_KEY: &str = "mawex-to";
/// The metadata key of an answer: the answering node's incarnation.
pub(crate) const INCARNATION_KEY: &str = "mawex-incarnation";

/// A node's own id and incarnation, and what it knows of its peers' (see the module's
/// documentation). Cheap to clone.
#[derive(Clone)]
pub struct NodeIdentity {
    id: u64,
    incarnation: u64,
    log: SledLogStore,
    /// The peers' incarnations read or stored so far (each RPC asks: the store is read once).
    known: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// Peers refused, and why, for [`crate::MasterNode::refused_peers`].
    refused: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Node `id` on the disk of `log`.
    pub(crate) fn new(id: u64, log: SledLogStore) -> Result<Self, RaftStoreError> {
        Ok(NodeIdentity {
            id,
            incarnation: log.incarnation()?,
            log,
            known: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// This node's incarnation.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What a request of this node says of it: `<id>:<incarnation>`.
    pub(crate) fn caller_value(&self) -> String {
        format!("{}:{}", self.id, self.incarnation)
    }

    /// Checks that peer `peer` comes with the disk it is known by (the first one it came
    /// with is remembered). The error says why it is refused; it is logged once a peer.
    pub(crate) fn check(&self, peer: u64, incarnation: u64) -> Result<(), String> {
        match self.known(peer) {
            Some(known) if known == incarnation => Ok(()),
            None => {
                if let Err(e) = self.log.remember_peer(peer, incarnation) {
                    debug!(peer, error = %e, "the incarnation of a peer could not be stored");
                }
                lock(&self.known).insert(peer, incarnation);
                Ok(())
            }
            Some(known) => Err(self.refuse(
                peer,
                format!(
                    "node {peer} came back with another disk (incarnation {incarnation:x}, \
                     known as {known:x}): a node that lost its disk must join under a new id \
                     (remove node {peer}, then add the new disk as a learner with another id)"
                ),
            )),
        }
    }

    /// Records that `peer` refused this node, with its reason.
    pub(crate) fn refused_by(&self, peer: u64, why: &str) {
        self.refuse(peer, why.to_owned());
    }

    /// What a request to `peer` says of it: `<id>:<incarnation>` as this node knows it, if
    /// it does.
    pub(crate) fn callee_value(&self, peer: u64) -> Option<String> {
        let known = self.known(peer)?;
        Some(format!("{peer}:{known}"))
    }

    /// The incarnation `peer` is known by, if it ever came: from memory, else the store.
    fn known(&self, peer: u64) -> Option<u64> {
        if let Some(known) = lock(&self.known).get(&peer) {
            return Some(*known);
        }
        match self.log.peer_incarnation(peer) {
            Ok(known) => {
                if let Some(known) = known {
                    lock(&self.known).insert(peer, known);
                }
                known
            }
            // The book cannot be read: let the peer in rather than stop the cluster.
            Err(e) => {
                debug!(peer, error = %e, "the incarnation of a peer could not be read");
                None
            }
        }
    }

    /// Checks that `caller`, which knows this node as `expected`, knows it by this disk;
    /// if it does not, this node lost its disk: the error says so (and is recorded).
    pub(crate) fn check_known_as(&self, caller: u64, expected: (u64, u64)) -> Result<(), String> {
        if expected == (self.id, self.incarnation) {
            return Ok(());
        }
        Err(self.refuse(
            caller,
            format!(
                "node {} is known to node {caller} by another disk (incarnation {:x}, this one \
                 is {:x}): a node that lost its disk must join under a new id (remove node {}, \
                 then add this disk as a learner with another id)",
                self.id, expected.1, self.incarnation, self.id
            ),
        ))
    }

    fn refuse(&self, peer: u64, why: String) -> String {
        let mut refused = lock(&self.refused);
        if refused.get(&peer) != Some(&why) {
            error!(node = self.id, peer, "{why}");
            refused.insert(peer, why.clone());
        }
        why
    }

    /// The peers refused (or refusing this node) so far, and why.
    pub(crate) fn refused(&self) -> BTreeMap<u64, String> {
        lock(&self.refused).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `<id>:<incarnation>` of a request's metadata.
pub(crate) fn parse_from(value: &str) -> Option<(u64, u64)> {
    let (id, incarnation) = value.split_once(':')?;
    Some((id.parse().ok()?, incarnation.parse().ok()?))
}

/// A network a [`crate::MasterNode`] tells its identity before it starts, so that its calls
/// carry it and check the answers' (see the module's documentation). A network that ignores
/// it (the default) checks nothing.
pub trait NodeNetwork: RaftNetworkFactory<MasterRaft> {
    /// Called once, before the node makes any call.
    fn attach(&mut self, identity: NodeIdentity) {
        let _ = identity;
    }
}

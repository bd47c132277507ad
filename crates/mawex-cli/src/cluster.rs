//! `mawex cluster`: who is in a cluster of masters, and changes to it (add a learner, promote
//! it, remove a node, hand the lead over), asked of the node that leads: a follower's
//! `NotLeader` names it, and the call goes there.

use mawex::cluster::{Members, RemoteClusterAdmin};
use mawex::ApiError;
use serde::Serialize;

use crate::cli::{ClusterAction, Output};
use crate::config::Config;
use crate::output::{self, Rows};
use crate::tasks::channel;
use crate::CliError;

/// Redirects followed before giving up (a lead that keeps moving).
const MAX_REDIRECTS: usize = 3;

/// `mawex cluster`.
///
/// # Errors
/// No node answers, a refused change (the message names the node), or a master that is not
/// a node of a cluster.
pub(crate) async fn cluster(
    config: &Config,
    output: Output,
    action: ClusterAction,
) -> Result<(), CliError> {
    let members = match action {
        ClusterAction::Members => {
            call(config, |admin| async move { admin.members().await }).await?
        }
        ClusterAction::Add { id, address } => {
            let members = call(config, |admin| {
                let address = address.clone();
                async move { admin.add_learner(id, &address).await }
            })
            .await?;
            eprintln!("node {id} added as a learner, caught up; promote it to make it vote");
            members
        }
        ClusterAction::Promote { ids } => {
            let members = call(config, |admin| {
                let ids = ids.clone();
                async move { admin.promote(ids).await }
            })
            .await?;
            eprintln!("promoted: {ids:?}");
            members
        }
        ClusterAction::Remove { id } => {
            let members = call(config, |admin| async move { admin.remove(id).await }).await?;
            eprintln!("node {id} removed");
            members
        }
        ClusterAction::Transfer { id } => {
            let members = call(
                config,
                |admin| async move { admin.transfer_leader(id).await },
            )
            .await?;
            eprintln!("node {id} leads");
            members
        }
    };
    output::print(output, &rows(&members))
}

/// `change` asked of the node that leads, once: found by asking `client.masters` in turn
/// who leads (a read, safe to repeat), then following a `NotLeader` if the lead moved
/// meanwhile. A change is never sent twice to different nodes: its error is the answer.
async fn call<F, Fut>(config: &Config, change: F) -> Result<Members, CliError>
where
    F: Fn(RemoteClusterAdmin) -> Fut,
    Fut: std::future::Future<Output = Result<Members, ApiError>>,
{
    let channel = channel(config)?;
    let mut endpoint = leader(config, &channel).await?;
    for _ in 0..MAX_REDIRECTS {
        match change(RemoteClusterAdmin::new(&endpoint, &channel)?).await {
            Err(ApiError::NotLeader {
                leader: Some(leader),
            }) => endpoint = with_scheme_of(&endpoint, &leader),
            answer => return answer.map_err(|e| refine(&endpoint, e)),
        }
    }
    Err(CliError::Api(ApiError::Unavailable(format!(
        "the lead kept moving ({MAX_REDIRECTS} redirects): try again once the cluster settles"
    ))))
}

/// The endpoint of the node that leads, as the first of `client.masters` that answers
/// says.
async fn leader(config: &Config, channel: &mawex::ChannelConfig) -> Result<String, CliError> {
    let mut last = None;
    for endpoint in &config.client.masters {
        match RemoteClusterAdmin::new(endpoint, channel)?.members().await {
            Ok(members) => {
                let address = members
                    .leader
                    .and_then(|id| members.voters.get(&id).cloned())
                    .filter(|address| !address.is_empty());
                match address {
                    Some(address) => return Ok(with_scheme_of(endpoint, &address)),
                    // A cluster of one made without addresses: the node itself leads.
                    None if members.leader.is_some() && members.voters.len() == 1 => {
                        return Ok(endpoint.clone())
                    }
                    None => {
                        last = Some(ApiError::Unavailable(format!(
                            "{endpoint} knows of no leader yet (an election?)"
                        )));
                    }
                }
            }
            Err(
                e @ (ApiError::Unimplemented(_)
                | ApiError::PermissionDenied(_)
                | ApiError::Unauthenticated(_)),
            ) => return Err(refine(endpoint, e)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => CliError::Api(e),
        None => CliError::Usage("client.masters names no master".into()),
    })
}

/// `e` from `endpoint`, said plainly where the raw error would puzzle.
fn refine(endpoint: &str, e: ApiError) -> CliError {
    match e {
        ApiError::Unimplemented(_) => CliError::Api(ApiError::Unimplemented(format!(
            "{endpoint} is not a node of a cluster (master.cluster): a cluster of one grows \
             once started again as node 1 with master.cluster"
        ))),
        other => CliError::Api(other),
    }
}

/// The leader's `host:port` (or URL) as an endpoint with `endpoint`'s scheme.
fn with_scheme_of(endpoint: &str, leader: &str) -> String {
    if leader.contains("://") {
        return leader.to_owned();
    }
    let scheme = endpoint
        .split_once("://")
        .map_or("http", |(scheme, _)| scheme);
    format!("{scheme}://{leader}")
}

/// A member as the table prints it.
#[derive(Debug, Serialize)]
struct MemberRow {
    id: u64,
    address: String,
    role: &'static str,
    leads: bool,
}

fn rows(members: &Members) -> Vec<MemberRow> {
    let voters = members.voters.iter().map(|(id, a)| (id, a, "voter"));
    let learners = members.learners.iter().map(|(id, a)| (id, a, "learner"));
    let mut rows: Vec<MemberRow> = voters
        .chain(learners)
        .map(|(id, address, role)| MemberRow {
            id: *id,
            address: address.clone(),
            role,
            leads: members.leader == Some(*id),
        })
        .collect();
    rows.sort_by_key(|row| row.id);
    rows
}

impl Rows for MemberRow {
    fn headers() -> &'static [&'static str] {
        &["id", "address", "role", "leads"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.address.clone(),
            self.role.to_owned(),
            if self.leads {
                "*".into()
            } else {
                String::new()
            },
        ]
    }
}

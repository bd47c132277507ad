//! Zero-configuration discovery on a LAN: a master with `discovery.key` set announces its
//! endpoint by UDP multicast every `discovery.interval`; a client or worker with no
//! `client.masters` listens for the announcements of its cluster and uses every master it
//! hears. Each announcement is signed with the cluster key (HMAC-SHA256) and carries its
//! cluster's name and the time it was sent: one signed with another key, naming another
//! cluster, older than a minute, or malformed is ignored.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::config::DiscoverySection;
use crate::CliError;

/// What starts every announcement (and names its format).
const MAGIC: &[u8] = b"mawex-discovery/1\n";
/// Announcements longer than this are not read.
const MAX_DATAGRAM: usize = 1024;
/// An announcement sent longer ago than this (or this far in the future: clocks differ) is
/// ignored, so that a recorded one cannot be replayed for long.
const MAX_AGE: Duration = Duration::from_secs(60);
/// The length of an HMAC-SHA256 tag.
const TAG: usize = 32;

/// What a master says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Announcement {
    cluster: String,
    /// The endpoint, when the master names one; otherwise `scheme://<sender>:port`.
    endpoint: Option<String>,
    scheme: String,
    port: u16,
    /// When it was sent, in milliseconds since the Unix epoch.
    sent_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn signing_key(key: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes())
}

/// The datagram of `announcement`: the magic, its JSON, and the tag over both.
fn seal(key: &hmac::Key, announcement: &Announcement) -> Result<Vec<u8>, CliError> {
    let mut datagram = MAGIC.to_vec();
    serde_json::to_writer(&mut datagram, announcement)
        .map_err(|e| CliError::Serve(format!("encoding the announcement: {e}")))?;
    let tag = hmac::sign(key, &datagram);
    datagram.extend_from_slice(tag.as_ref());
    if datagram.len() > MAX_DATAGRAM {
        return Err(CliError::Config(format!(
            "discovery: the announcement is {} bytes, more than {MAX_DATAGRAM} \
             (a shorter discovery.cluster or discovery.advertise)",
            datagram.len()
        )));
    }
    Ok(datagram)
}

/// The endpoint `datagram` from `from` announces, if it is a fresh announcement of
/// `cluster` signed with `key`.
fn open(
    key: &hmac::Key,
    cluster: &str,
    datagram: &[u8],
    from: SocketAddr,
    now_ms: u64,
) -> Result<String, &'static str> {
    if datagram.len() > MAX_DATAGRAM || datagram.len() < MAGIC.len() + TAG {
        return Err("not an announcement (its length)");
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG);
    let body = signed
        .strip_prefix(MAGIC)
        .ok_or("not an announcement (its first bytes)")?;
    hmac::verify(key, signed, tag).map_err(|_| "signed with another key")?;
    let announcement: Announcement =
        serde_json::from_slice(body).map_err(|_| "signed, but not understood")?;
    if announcement.cluster != cluster {
        return Err("of another cluster");
    }
    let max_age = u64::try_from(MAX_AGE.as_millis()).unwrap_or(u64::MAX);
    if now_ms.abs_diff(announcement.sent_ms) > max_age {
        return Err("too old (or from a clock far ahead)");
    }
    if !matches!(announcement.scheme.as_str(), "http" | "https") {
        return Err("of an unknown scheme");
    }
    Ok(match announcement.endpoint {
        Some(endpoint) => endpoint,
        None => format!(
            "{}://{}:{}",
            announcement.scheme,
            from.ip(),
            announcement.port
        ),
    })
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> CliError {
    CliError::io(format!("discovery: {what}"))
}

/// Announces the master serving at `address` every `discovery.interval` until the task is
/// aborted. Sending errors (no route to the group yet, say) are logged and do not stop it.
///
/// # Errors
/// No key, or a socket that cannot be made.
pub(crate) fn announce(
    discovery: &DiscoverySection,
    scheme: &str,
    address: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    let key =
        signing_key(discovery.key.as_deref().ok_or_else(|| {
            CliError::Config("discovery.key: needed to announce the master".into())
        })?);
    let endpoint = discovery.advertise.clone().or_else(|| {
        // A master bound to one address names it; one bound to all is reached at the
        // address its announcements come from.
        (!address.ip().is_unspecified()).then(|| format!("{scheme}://{address}"))
    });
    let mut announcement = Announcement {
        cluster: discovery.cluster.clone(),
        endpoint,
        scheme: scheme.to_owned(),
        port: address.port(),
        sent_ms: now_ms(),
    };
    seal(&key, &announcement)?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("making the announcing socket"))?;
    // One hop: the LAN, not beyond its routers.
    socket
        .set_multicast_ttl_v4(1)
        .map_err(io("setting the multicast TTL"))?;
    if let Some(interface) = discovery.interface {
        socket
            .set_multicast_if_v4(&interface)
            .map_err(io("choosing discovery.interface"))?;
    }
    let local = SocketAddrV4::new(discovery.interface.unwrap_or(Ipv4Addr::UNSPECIFIED), 0);
    socket
        .bind(&local.into())
        .map_err(io("binding the announcing socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(io("setting the socket non-blocking"))?;
    let socket = UdpSocket::from_std(socket.into()).map_err(io("registering the socket"))?;
    let group = discovery.group;
    let interval = discovery.interval;
    Ok(tokio::spawn(async move {
        let mut warned = false;
        loop {
            announcement.sent_ms = now_ms();
            match seal(&key, &announcement) {
                Ok(datagram) => match socket.send_to(&datagram, group).await {
                    Ok(_) => warned = false,
                    Err(e) if !warned => {
                        warn!(error = %e, %group, "discovery: the announcement was not sent");
                        warned = true;
                    }
                    Err(e) => debug!(error = %e, "discovery: the announcement was not sent"),
                },
                Err(e) => {
                    warn!(error = %e, "discovery: no announcement");
                    return;
                }
            }
            tokio::time::sleep(interval).await;
        }
    }))
}

/// The masters of the cluster heard within `discovery.wait`: once one is heard, the others
/// get one more interval and a half to be heard too.
///
/// # Errors
/// No key, a socket that cannot be made, or no master heard in time.
pub(crate) async fn discover(discovery: &DiscoverySection) -> Result<Vec<String>, CliError> {
    let key = signing_key(discovery.key.as_deref().ok_or_else(|| {
        CliError::Config("discovery.key: needed to find masters with no client.masters".into())
    })?);
    let group = discovery.group;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("making the listening socket"))?;
    // Other processes on this machine listen too.
    socket
        .set_reuse_address(true)
        .map_err(io("sharing the port"))?;
    // Bound to the group's address: nothing but the group's datagrams arrive.
    socket
        .bind(&SocketAddr::V4(group).into())
        .map_err(io("binding the group's port"))?;
    socket
        .join_multicast_v4(
            group.ip(),
            &discovery.interface.unwrap_or(Ipv4Addr::UNSPECIFIED),
        )
        .map_err(io("joining the multicast group (is there a route to it?)"))?;
    socket
        .set_nonblocking(true)
        .map_err(io("setting the socket non-blocking"))?;
    let socket = UdpSocket::from_std(socket.into()).map_err(io("registering the socket"))?;

    let deadline = tokio::time::Instant::now() + discovery.wait;
    let mut settle_by = None;
    let mut found = BTreeSet::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let until = settle_by.map_or(deadline, |settle: tokio::time::Instant| {
            settle.min(deadline)
        });
        let Ok(received) = tokio::time::timeout_at(until, socket.recv_from(&mut buffer)).await
        else {
            break;
        };
        let (length, from) = received.map_err(io("receiving"))?;
        let datagram = buffer.get(..length).unwrap_or_default();
        match open(&key, &discovery.cluster, datagram, from, now_ms()) {
            Ok(endpoint) => {
                debug!(%endpoint, %from, "discovery: a master announced itself");
                found.insert(endpoint);
                settle_by.get_or_insert_with(|| {
                    tokio::time::Instant::now() + discovery.interval.saturating_mul(3) / 2
                });
            }
            Err(why) => debug!(%from, why, "discovery: an announcement ignored"),
        }
    }
    if found.is_empty() {
        return Err(CliError::Discovery(format!(
            "no master of cluster {:?} announced itself on {group} within {:?}: is one \
             running with the same discovery.cluster and discovery.key, on this network?",
            discovery.cluster, discovery.wait
        )));
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(cluster: &str) -> Announcement {
        Announcement {
            cluster: cluster.into(),
            endpoint: None,
            scheme: "http".into(),
            port: 7070,
            sent_ms: 1_000_000,
        }
    }

    fn from() -> SocketAddr {
        SocketAddr::from(([10, 77, 0, 1], 40_000))
    }

    #[test]
    fn a_signed_announcement_of_the_cluster_names_the_sender() {
        let key = signing_key("a key of sixteen bytes or more");
        let datagram = seal(&key, &announcement("blue")).expect("sealed");
        assert_eq!(
            open(&key, "blue", &datagram, from(), 1_000_500),
            Ok("http://10.77.0.1:7070".to_owned())
        );
        let mut named = announcement("blue");
        named.endpoint = Some("https://m1.example:7070".into());
        let datagram = seal(&key, &named).expect("sealed");
        assert_eq!(
            open(&key, "blue", &datagram, from(), 1_000_500),
            Ok("https://m1.example:7070".to_owned())
        );
    }

    #[test]
    fn another_key_cluster_age_or_a_changed_byte_is_ignored() {
        let key = signing_key("a key of sixteen bytes or more");
        let datagram = seal(&key, &announcement("blue")).expect("sealed");
        let other = signing_key("another key of sixteen bytes");
        assert_eq!(
            open(&other, "blue", &datagram, from(), 1_000_500),
            Err("signed with another key")
        );
        assert_eq!(
            open(&key, "green", &datagram, from(), 1_000_500),
            Err("of another cluster")
        );
        assert!(open(&key, "blue", &datagram, from(), 1_000_000 + 61_000).is_err());
        assert!(open(&key, "blue", &datagram, from(), 0).is_err());
        let mut changed = datagram.clone();
        let middle = changed.len() / 2;
        changed[middle] ^= 1;
        assert!(open(&key, "blue", &changed, from(), 1_000_500).is_err());
        assert!(open(&key, "blue", &datagram[..10], from(), 1_000_500).is_err());
        assert!(open(&key, "blue", &[0u8; 4096], from(), 1_000_500).is_err());
    }
}

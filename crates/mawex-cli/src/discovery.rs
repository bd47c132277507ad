//! Zero-configuration discovery on a LAN: a master with `discovery.key` set announces its
//! endpoint by UDP multicast every `discovery.interval`; a client or worker with no
//! `client.masters` listens for the announcements of its cluster and uses every master it
//! hears. Each announcement is signed with the cluster key (HMAC-SHA256) and carries its
//! cluster's name, the master's endpoint and the time it was sent: one signed with another
//! key, naming another cluster, older than a minute, or malformed is ignored. The endpoint is
//! signed, never taken from the datagram's source address: a replayed announcement can only
//! name the master that signed it.

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
/// The most masters one discovery keeps (a cluster has a handful).
const MAX_MASTERS: usize = 64;

/// What a master says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Announcement {
    cluster: String,
    /// Where clients reach it: `http://` or `https://`.
    endpoint: String,
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

/// The endpoint `datagram` announces, if it is a fresh announcement of `cluster` signed with
/// `key`; else why it is ignored.
fn open(
    key: &hmac::Key,
    cluster: &str,
    datagram: &[u8],
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
    if !(announcement.endpoint.starts_with("http://")
        || announcement.endpoint.starts_with("https://"))
    {
        return Err("of an endpoint that is not http:// or https://");
    }
    Ok(announcement.endpoint)
}

/// The local address this machine sends to `group` from: the address of the interface its
/// routes choose (a UDP socket "connected" to the group sends nothing).
fn route_to(group: SocketAddrV4) -> std::io::Result<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    probe.connect(group)?;
    Ok(probe.local_addr()?.ip())
}

/// The endpoint a master serving at `address` announces: `discovery.advertise`, else its
/// own address, else (bound to every interface) the address of the interface that reaches
/// the group (`discovery.interface`, or the routes' choice).
fn endpoint_of(
    discovery: &DiscoverySection,
    scheme: &str,
    address: SocketAddr,
) -> Result<String, CliError> {
    if let Some(endpoint) = &discovery.advertise {
        return Ok(endpoint.clone());
    }
    let ip = if !address.ip().is_unspecified() {
        address.ip()
    } else if let Some(interface) = discovery.interface {
        interface.into()
    } else {
        route_to(discovery.group).map_err(|e| {
            CliError::Config(format!(
                "discovery.advertise: no route to {} to learn this master's address from \
                 ({e}); set discovery.advertise or discovery.interface",
                discovery.group
            ))
        })?
    };
    if ip.is_loopback() {
        warn!(%ip, "discovery: this master announces a loopback address, which only this machine can reach (set discovery.advertise)");
    }
    Ok(format!(
        "{scheme}://{}",
        SocketAddr::new(ip, address.port())
    ))
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
    let endpoint = endpoint_of(discovery, scheme, address)?;
    tracing::info!(%endpoint, group = %discovery.group, "discovery: announcing this master");
    let mut announcement = Announcement {
        cluster: discovery.cluster.clone(),
        endpoint,
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
    // Why datagrams were ignored, for the error if no master is found.
    let mut ignored: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let until = settle_by.map_or(deadline, |settle: tokio::time::Instant| {
            settle.min(deadline)
        });
        let Ok(received) = tokio::time::timeout_at(until, socket.recv_from(&mut buffer)).await
        else {
            break;
        };
        let (length, from) = match received {
            Ok(received) => received,
            Err(e) => {
                // A datagram that could not be read ends nothing.
                debug!(error = %e, "discovery: receiving failed; listening on");
                continue;
            }
        };
        let datagram = buffer.get(..length).unwrap_or_default();
        match open(&key, &discovery.cluster, datagram, now_ms()) {
            Ok(endpoint) => {
                debug!(%endpoint, %from, "discovery: a master announced itself");
                // Bounded: one entry per endpoint a holder of the key signed.
                if found.len() < MAX_MASTERS {
                    found.insert(endpoint);
                }
                settle_by.get_or_insert_with(|| {
                    tokio::time::Instant::now() + discovery.interval.saturating_mul(3) / 2
                });
            }
            Err(why) => {
                debug!(%from, why, "discovery: an announcement ignored");
                let count = ignored.entry(why).or_default();
                *count = count.saturating_add(1);
            }
        }
    }
    if found.is_empty() {
        let heard = if ignored.is_empty() {
            "nothing was heard".to_owned()
        } else {
            let reasons: Vec<String> = ignored
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            format!("ignored: {}", reasons.join(", "))
        };
        return Err(CliError::Discovery(format!(
            "no master of cluster {:?} announced itself on {group} within {:?} ({heard}): \
             is one running with the same discovery.cluster and discovery.key, on this \
             network, with a clock within a minute of this one's?",
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
            endpoint: "http://10.77.0.1:7070".into(),
            sent_ms: 1_000_000,
        }
    }

    #[test]
    fn a_signed_announcement_of_the_cluster_names_its_signed_endpoint() {
        let key = signing_key("a key of sixteen bytes or more");
        let datagram = seal(&key, &announcement("blue")).expect("sealed");
        assert_eq!(
            open(&key, "blue", &datagram, 1_000_500),
            Ok("http://10.77.0.1:7070".to_owned())
        );
        let mut other = announcement("blue");
        other.endpoint = "ftp://10.77.0.1:21".into();
        let datagram = seal(&key, &other).expect("sealed");
        assert!(open(&key, "blue", &datagram, 1_000_500).is_err());
    }

    #[test]
    fn a_master_on_every_interface_announces_the_address_that_reaches_the_group() {
        let mut discovery = DiscoverySection::default();
        let all = SocketAddr::from(([0, 0, 0, 0], 7070));
        discovery.interface = Some(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(
            endpoint_of(&discovery, "https", all).expect("an endpoint"),
            "https://10.1.2.3:7070"
        );
        let one = SocketAddr::from(([10, 9, 9, 9], 7071));
        assert_eq!(
            endpoint_of(&discovery, "http", one).expect("an endpoint"),
            "http://10.9.9.9:7071"
        );
        discovery.advertise = Some("https://m1.example:443".into());
        assert_eq!(
            endpoint_of(&discovery, "http", all).expect("an endpoint"),
            "https://m1.example:443"
        );
    }

    #[test]
    fn another_key_cluster_age_or_a_changed_byte_is_ignored() {
        let key = signing_key("a key of sixteen bytes or more");
        let datagram = seal(&key, &announcement("blue")).expect("sealed");
        let other = signing_key("another key of sixteen bytes");
        assert_eq!(
            open(&other, "blue", &datagram, 1_000_500),
            Err("signed with another key")
        );
        assert_eq!(
            open(&key, "green", &datagram, 1_000_500),
            Err("of another cluster")
        );
        assert!(open(&key, "blue", &datagram, 1_000_000 + 61_000).is_err());
        assert!(open(&key, "blue", &datagram, 0).is_err());
        let mut changed = datagram.clone();
        let middle = changed.len() / 2;
        changed[middle] ^= 1;
        assert!(open(&key, "blue", &changed, 1_000_500).is_err());
        assert!(open(&key, "blue", &datagram[..10], 1_000_500).is_err());
        assert!(open(&key, "blue", &[0u8; 4096], 1_000_500).is_err());
    }
}

//! How clients and pods reach their masters: a list of endpoints, lazily connected channels,
//! and the retry loop that moves to the next endpoint while the current one is unreachable.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::debug;

use crate::error::ApiError;

/// How connections to a master are made and kept alive. Shared by
/// [`RemoteMasterProxy`](super::RemoteMasterProxy) and
/// [`GrpcPodConnector`](super::GrpcPodConnector).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Time allowed to establish a connection. Default: 5 s.
    pub connect_timeout: Duration,
    /// TCP keepalive of the connection, so a vanished peer is noticed. Default: 10 s.
    pub tcp_keepalive: Option<Duration>,
    /// Interval of HTTP/2 pings on an open connection, idle or not. Default: 10 s.
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection counts as dead. Default: 20 s.
    pub keepalive_timeout: Duration,
    /// Largest message sent or received, in bytes. Default: 64 MiB.
    pub max_message_bytes: usize,
    /// TLS towards the masters, whose endpoints are then `https://`. Default: none (plain
    /// `http://`).
    pub tls: Option<ClientTls>,
    /// The token sent with every call, for masters that require one. Default: none.
    pub token: Option<BearerToken>,
}

/// A secret sent as `authorization: Bearer <token>` with every call. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// The token `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        BearerToken(secret.into())
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(hidden)")
    }
}

/// Adds the token, if any, to every request of a channel.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to a master that carries the configured token (see
/// [`ChannelConfig::connect_lazy`]).
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// TLS of a client or pod towards its masters (rustls).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTls {
    /// PEM certificates of the authorities that sign the masters' certificates.
    pub ca_pem: Vec<u8>,
    /// The name the masters' certificates are checked against, if not the endpoint's host.
    pub domain: Option<String>,
    /// PEM certificate chain and private key this side presents, for masters that require
    /// client certificates (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trusts masters whose certificates the authorities in `ca_pem` signed.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        ClientTls {
            ca_pem: ca_pem.into(),
            domain: None,
            identity: None,
        }
    }

    /// Checks the masters' certificates against `domain` instead of the endpoint's host.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Presents `cert_pem` (a chain) with its `key_pem` to the masters (mutual TLS).
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// The private key stays out of logs.
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("domain", &self.domain)
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "(certificate and key)"),
            )
            .finish()
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            connect_timeout: Duration::from_secs(5),
            tcp_keepalive: Some(Duration::from_secs(10)),
            http2_keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            max_message_bytes: 64 * 1024 * 1024,
            tls: None,
            token: None,
        }
    }
}

impl ChannelConfig {
    /// The same settings, sending `token` with every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(BearerToken::new(token));
        self
    }

    /// The header value of the token, checked.
    fn bearer(&self) -> Result<Bearer, ApiError> {
        self.token
            .as_ref()
            .map(|BearerToken(secret)| {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {secret}").parse().map_err(|_| {
                        ApiError::InvalidArgument(
                            "the token must be printable ASCII without spaces".into(),
                        )
                    })?;
                // Kept out of HTTP/2 header compression tables.
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()
            .map(Bearer)
    }

    /// The same settings with TLS towards the masters.
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A channel to `endpoint` with these settings, carrying the token: it connects on first
    /// use and again after every failure. What the client, the pod connector and the
    /// masters' Raft link call their masters on.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed endpoint, one whose scheme does not match the TLS
    /// settings (`https://` with TLS, `http://` without), or a token that is not valid in
    /// a header.
    pub fn connect_lazy(&self, endpoint: &str) -> Result<AuthChannel, ApiError> {
        Ok(InterceptedService::new(
            self.channel(endpoint)?,
            self.bearer()?,
        ))
    }

    /// A channel to `endpoint` that connects on first use and again after every failure.
    fn channel(&self, endpoint: &str) -> Result<Channel, ApiError> {
        let bad = |m: String| ApiError::InvalidArgument(format!("endpoint {endpoint:?}: {m}"));
        let mut channel =
            Endpoint::from_shared(endpoint.to_owned()).map_err(|e| bad(e.to_string()))?;
        // TLS is used for https:// endpoints only: refuse the mismatches rather than talk in
        // the clear to an endpoint that was meant to be secured.
        let https = endpoint.starts_with("https://");
        match (&self.tls, https) {
            (Some(tls), true) => {
                channel = channel
                    .tls_config(tls.config())
                    .map_err(|e| bad(format!("TLS settings: {e}")))?;
            }
            (Some(_), false) => {
                return Err(bad(
                    "TLS is configured, so the endpoint must be https://".to_owned()
                ))
            }
            (None, true) => {
                return Err(bad(
                    "an https:// endpoint needs TLS settings (ChannelConfig::with_tls)".to_owned(),
                ))
            }
            (None, false) => {}
        }
        Ok(channel
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(self.tcp_keepalive)
            .http2_keep_alive_interval(self.http2_keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .connect_lazy())
    }
}

/// The masters a client may talk to, one of them current. A call that finds the current one
/// unreachable moves on to the next, so a list of masters keeps working while one is down.
#[derive(Debug)]
pub(crate) struct Masters {
    endpoints: Vec<(String, AuthChannel)>,
    current: AtomicUsize,
}

impl Masters {
    /// Lazy channels to each of `endpoints` (none is contacted yet).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty list or a malformed endpoint.
    pub(crate) fn new<I, S>(endpoints: I, config: &ChannelConfig) -> Result<Self, ApiError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints = endpoints
            .into_iter()
            .map(|e| {
                let e = e.as_ref();
                Ok((e.to_owned(), config.connect_lazy(e)?))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        if endpoints.is_empty() {
            return Err(ApiError::InvalidArgument("no master endpoint given".into()));
        }
        Ok(Masters {
            endpoints,
            current: AtomicUsize::new(0),
        })
    }

    /// The current endpoint's index and channel.
    pub(crate) fn current(&self) -> (usize, AuthChannel) {
        let index = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        (index, self.endpoints[index].1.clone())
    }

    /// The endpoint at `index` failed: move on to the next one, unless another call did
    /// already.
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A master answered that `leader` leads: make the endpoint at that address current, if
    /// it is one of these (whatever its scheme); else move on from `index`.
    pub(crate) fn follow(&self, index: usize, leader: Option<&str>) {
        fn bare(address: &str) -> &str {
            address
                .split_once("://")
                .map_or(address, |(_, rest)| rest)
                .trim_end_matches('/')
        }
        let at = leader.and_then(|leader| {
            self.endpoints
                .iter()
                .position(|(endpoint, _)| bare(endpoint) == bare(leader))
        });
        match at {
            // The freshest word on who leads wins, whatever another call did meanwhile.
            Some(at) => self.current.store(at, Ordering::Relaxed),
            None => self.failed(index),
        }
    }

    /// How many masters there are.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The endpoint at `index`, for error messages.
    pub(crate) fn endpoint(&self, index: usize) -> &str {
        self.endpoints
            .get(index)
            .map_or("(none)", |(e, _)| e.as_str())
    }

    /// The endpoints, for error messages.
    pub(crate) fn describe(&self) -> String {
        let names: Vec<&str> = self.endpoints.iter().map(|(e, _)| e.as_str()).collect();
        names.join(", ")
    }
}

/// The longest pause between rounds while the masters answer that none of them leads.
const ELECTION_POLL: Duration = Duration::from_millis(100);

fn retry_delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `call` on the current master until it returns something other than `Unavailable`,
/// moving to the next endpoint after each failure, or until `retry_for` has passed since the
/// first failure. The final error names the endpoints and how long they were tried.
pub(crate) async fn retrying<T, F, Fut>(
    masters: &Masters,
    retry_for: Duration,
    mut call: F,
) -> Result<T, ApiError>
where
    F: FnMut(AuthChannel) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    // The window opens at the first failure: a long wait (`await_result`) that loses its
    // connection still gets the full `retry_for` to find the master again.
    let mut started = None;
    let mut delays = retry_delays();
    let mut failures = 0usize;
    // Whether a master of this round of tries answered that it does not lead.
    let mut electing = false;
    loop {
        let (index, channel) = masters.current();
        let result = call(channel).await;
        match result {
            Err(e) if e.is_retryable() => {
                let reason = e.to_string();
                match &e {
                    // A follower that names the leader: that one is tried next (else the
                    // next in the list), counted like any other failure.
                    ApiError::NotLeader { leader } => {
                        electing = true;
                        masters.follow(index, leader.as_deref());
                    }
                    _ => masters.failed(index),
                }
                let started = *started.get_or_insert_with(tokio::time::Instant::now);
                if started.elapsed() >= retry_for {
                    return Err(ApiError::Unavailable(format!(
                        "no master reachable at {} (tried for {:.1} s): {reason}",
                        masters.describe(),
                        started.elapsed().as_secs_f64()
                    )));
                }
                // The next master is tried at once; a pause comes after each round of them.
                failures = failures.saturating_add(1);
                if !failures.is_multiple_of(masters.len()) {
                    continue;
                }
                // The last pause ends with the window, so the call gives up on time. While a
                // cluster elects a leader (a master of the round answered, but does not lead),
                // pauses stay short: an election takes about a second.
                let cap = if std::mem::take(&mut electing) {
                    ELECTION_POLL
                } else {
                    Duration::from_secs(1)
                };
                let delay = delays
                    .next()
                    .unwrap_or(cap)
                    .min(cap)
                    .min(retry_for.saturating_sub(started.elapsed()));
                debug!(error = %reason, ?delay, "master unavailable; retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_or_malformed_list_is_refused() {
        let config = ChannelConfig::default();
        let none: [&str; 0] = [];
        assert!(matches!(
            Masters::new(none, &config),
            Err(ApiError::InvalidArgument(_))
        ));
        let err = Masters::new(["http://ok:1", "not a uri"], &config).unwrap_err();
        assert!(err.to_string().contains("not a uri"), "{err}");
    }

    #[tokio::test]
    async fn a_failure_moves_to_the_next_endpoint_once() {
        let masters = Masters::new(
            ["http://a:1", "http://b:1", "http://c:1"],
            &ChannelConfig::default(),
        )
        .unwrap();
        assert_eq!(masters.current().0, 0);
        masters.failed(0);
        // A second caller that saw the same endpoint fail does not skip one more.
        masters.failed(0);
        assert_eq!(masters.current().0, 1);
        masters.failed(1);
        masters.failed(2);
        assert_eq!(masters.current().0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_error_names_the_endpoints_and_the_time_tried() {
        let masters =
            Masters::new(["http://a:1", "http://b:1"], &ChannelConfig::default()).unwrap();
        let mut seen = Vec::new();
        let err = retrying(&masters, Duration::from_secs(3), |_| {
            seen.push(masters.current().0);
            async { Err::<(), _>(ApiError::Unavailable("tcp connect error".into())) }
        })
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http://a:1, http://b:1"), "{text}");
        assert!(text.contains("tried for 3."), "{text}");
        assert!(text.contains("tcp connect error"), "{text}");
        // Both endpoints were tried, alternately.
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    }
}

//! TLS on the server and on both remote ends: a client and a pod over https, mutual TLS,
//! and the mistakes refused with a clear error instead of talking in the clear.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::sync::Arc;
use std::time::Duration;

use common::{group, instrumented, pod_id, wait_for, TestMaster};
use mawex::{
    ApiError, ChannelConfig, ClientTls, GrpcPodConnector, MasterProxy, Outcome, Pod, PodConfig,
    RemoteConfig, RemoteMasterProxy, Server, ServerError, ServerTls, TaskSpec,
};
use pki::new_pki;

fn remote(endpoint: &str, channel: ChannelConfig) -> Result<RemoteMasterProxy, ApiError> {
    let mut config = RemoteConfig::default();
    config.retry_for = Duration::from_secs(1);
    config.channel = channel;
    RemoteMasterProxy::with_config([endpoint], config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_pods_speak_tls_and_plain_text_is_refused() {
    let pki = new_pki();
    let m = TestMaster::start().await;
    let server = Server::new(m.master())
        .tls(ServerTls::new(pki.server.0.clone(), pki.server.1.clone()))
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = server.local_addr().port();
    let https = format!("https://localhost:{port}");
    let tls = ChannelConfig::default().with_tls(ClientTls::new(pki.ca.clone()));

    let g = group("tls");
    let (handlers, _, _) = instrumented();
    let pod = Pod::start(
        PodConfig::new(pod_id("p-tls"), vec![g.clone()]),
        Arc::new(mawex::InProcess::new(handlers)),
        Arc::new(GrpcPodConnector::with_config([https.as_str()], tls.clone()).unwrap()),
    )
    .unwrap();
    let client = remote(&https, tls.clone()).unwrap();
    let ack = client
        .submit(TaskSpec::new(g.clone(), "echo", "secret"))
        .await
        .unwrap();
    let result = client.await_result(ack.id).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("secret".into()));

    // Plain HTTP/2 to the TLS port is told to use TLS, and nothing else.
    let plain = remote(
        &format!("http://127.0.0.1:{port}"),
        ChannelConfig::default(),
    )
    .unwrap();
    let refused = plain.get(ack.id).await;
    assert!(
        matches!(&refused, Err(ApiError::Unauthenticated(m)) if m.contains("requires TLS")),
        "{refused:?}"
    );
    // A refused connection is closed soon after, so it cannot hold a connection place.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // The HTTP/2 preface and an empty SETTINGS frame.
        raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(8), async {
            let mut buf = [0_u8; 1024];
            while matches!(raw.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "a refused connection stayed open");
    }
    // A client that trusts another authority refuses the server's certificate, and says
    // so at once instead of retrying what cannot work.
    let stranger = remote(
        &https,
        ChannelConfig::default().with_tls(ClientTls::new(new_pki().ca)),
    )
    .unwrap();
    let refused = stranger.get(ack.id).await;
    assert!(
        matches!(&refused, Err(ApiError::Unauthenticated(m))
            if m.contains("TLS handshake failed") && m.contains("certificate")),
        "{refused:?}"
    );
    // Mismatched settings are refused before anything is sent.
    for (endpoint, channel) in [
        (format!("http://127.0.0.1:{port}"), tls.clone()),
        (https.clone(), ChannelConfig::default()),
    ] {
        match remote(&endpoint, channel) {
            Err(ApiError::InvalidArgument(m)) => assert!(m.contains("https"), "{m}"),
            other => panic!("expected a refusal for {endpoint}, got {other:?}"),
        }
    }
    pod.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    let pki = new_pki();
    let m = TestMaster::start().await;
    let server = Server::new(m.master())
        .tls(
            ServerTls::new(pki.server.0.clone(), pki.server.1.clone())
                .require_client_certificates(pki.ca.clone()),
        )
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let https = format!("https://localhost:{}", server.local_addr().port());
    let spec = TaskSpec::new(group("mtls"), "echo", "x");

    let with_identity = |(cert, key): (String, String)| {
        ChannelConfig::default().with_tls(ClientTls::new(pki.ca.clone()).with_identity(cert, key))
    };
    // Each refusal says what is wrong with the client's certificate, as `Unauthenticated`,
    // rather than closing a connection the client would retry.
    for (who, channel, expected) in [
        (
            "no certificate",
            ChannelConfig::default().with_tls(ClientTls::new(pki.ca.clone())),
            "requires a client certificate",
        ),
        (
            "another authority's certificate",
            with_identity(new_pki().client),
            "client certificate was refused",
        ),
        (
            "an expired certificate",
            with_identity(pki.expired_leaf("pod-old.mawex.test")),
            "expired",
        ),
    ] {
        let client = remote(&https, channel).unwrap();
        let refused = client.submit(spec.clone()).await;
        assert!(
            matches!(&refused, Err(ApiError::Unauthenticated(m)) if m.contains(expected)),
            "{who}: {refused:?}"
        );
    }
    let known = remote(&https, with_identity(pki.client.clone())).unwrap();
    assert!(known.submit(spec.clone()).await.unwrap().created);

    // Plain text to the same port is told to use TLS.
    let plain = remote(
        &format!("http://127.0.0.1:{}", server.local_addr().port()),
        ChannelConfig::default(),
    )
    .unwrap();
    let refused = plain.submit(spec).await;
    assert!(
        matches!(&refused, Err(ApiError::Unauthenticated(m)) if m.contains("requires TLS")),
        "{refused:?}"
    );
    // Every route is behind the certificate check, health included.
    let anonymous = tonic::transport::Endpoint::from_shared(https.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert_eq!(
        health.map(|_| ()).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // A reload cannot drop the client certificate requirement (that would open the port).
    let dropped = server
        .tls()
        .unwrap()
        .reload(&ServerTls::new(pki.server.0.clone(), pki.server.1.clone()));
    assert!(
        matches!(&dropped, Err(ServerError::Config(m)) if m.contains("client certificates")),
        "{dropped:?}"
    );
    server.shutdown().await.unwrap();
    m.shutdown().await;
}

/// With mutual TLS a pod id is bound to the subject of the certificate that registered
/// it, even when many pods share one token: another pod of the same fleet (another
/// certificate, the same token) cannot take the id over; the owner can come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_id_is_bound_to_its_certificate() {
    use mawex::auth::{Role, TokenEntry, TokenStore, Tokens};
    use mawex::pod::{PodConnector, PodHello};
    let pki = new_pki();
    let m = TestMaster::start().await;
    let fleet = Tokens::new([
        TokenEntry::new("fleet", Role::Pod, "fleet-secret"),
        TokenEntry::new("ops", Role::Admin, "ops-secret"),
    ])
    .unwrap();
    let server = Server::new(m.master())
        .tls(
            ServerTls::new(pki.server.0.clone(), pki.server.1.clone())
                .require_client_certificates(pki.ca.clone()),
        )
        .tokens(TokenStore::new(fleet))
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let https = format!("https://localhost:{}", server.local_addr().port());
    let pod_with = |name: &str| {
        let (cert, key) = pki.leaf(name);
        let channel = ChannelConfig::default()
            .with_tls(ClientTls::new(pki.ca.clone()).with_identity(cert, key))
            .with_token("fleet-secret");
        GrpcPodConnector::with_config([https.as_str()], channel).unwrap()
    };
    let hello = || PodHello::new(pod_id("worker-7"), vec![group("mtls")]);
    let (owner, neighbour) = (pod_with("host-a.mawex.test"), pod_with("host-b.mawex.test"));

    let mut first = owner.connect(hello()).await.unwrap();
    let taken = neighbour.connect(hello()).await;
    let refusal = common::denied(taken);
    assert!(refusal.contains("another credential"), "{refusal}");
    // The neighbour registers under an id of its own; the owner's session stayed open and
    // the owner may reconnect.
    drop(
        neighbour
            .connect(PodHello::new(pod_id("worker-8"), vec![group("elsewhere")]))
            .await
            .unwrap(),
    );
    // The owner's session is still the one the master serves: it is assigned new work.
    let (cert, key) = pki.leaf("ops.mawex.test");
    let client = remote(
        &https,
        ChannelConfig::default()
            .with_tls(ClientTls::new(pki.ca.clone()).with_identity(cert, key))
            .with_token("ops-secret"),
    )
    .unwrap();
    let ack = client
        .submit(TaskSpec::new(group("mtls"), "noop", "x"))
        .await
        .unwrap();
    let assigned = common::next_assignments(&mut first.inbox).await;
    assert_eq!(assigned[0].attempt.task, ack.id);
    drop(first);
    owner.connect(hello()).await.expect("the owner comes back");
    server.shutdown().await.unwrap();
    m.shutdown().await;
}

#[tokio::test]
async fn bad_certificates_are_refused_at_start() {
    let m = TestMaster::start().await;
    let started = Server::new(m.master())
        .tls(ServerTls::new("not a certificate", "not a key"))
        .start("127.0.0.1:0".parse().unwrap())
        .await;
    match started {
        Err(ServerError::Config(message)) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    m.shutdown().await;
}

/// A peer that starts a TLS handshake and stalls is closed after `first_bytes_timeout`, so
/// stalled handshakes cannot hold every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = new_pki();
    let m = TestMaster::start().await;
    let mut config = mawex::ServerConfig::default();
    config.max_connections = 1;
    config.first_bytes_timeout = Duration::from_millis(300);
    let server = Server::new(m.master())
        .config(config)
        .tls(ServerTls::new(pki.server.0.clone(), pki.server.1.clone()))
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut stalled = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    // The first bytes of a TLS record header, and nothing more.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut heard = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut heard)).await;
    assert!(closed.is_ok(), "the stalled handshake was closed");
    let https = format!("https://localhost:{}", server.local_addr().port());
    let tls = ChannelConfig::default().with_tls(ClientTls::new(pki.ca.clone()));
    common::wait_for("room for a real client", || {
        let client = remote(&https, tls.clone()).unwrap();
        async move {
            matches!(
                client.get(mawex::TaskId::new()).await,
                Err(ApiError::NotFound(_))
            )
            .then_some(())
        }
    })
    .await;
    server.shutdown().await.unwrap();
    m.shutdown().await;
}

/// A certificate rotated on disk while the server runs is used for new connections, with no
/// restart: a client that trusts only the new authority gets in, one that trusts only the
/// old one no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_for_new_connections() {
    let (old, new) = (new_pki(), new_pki());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, &old.server.0).unwrap();
    std::fs::write(&key, &old.server.1).unwrap();
    let m = TestMaster::start().await;
    let server = Server::new(m.master())
        .tls(ServerTls::from_files(&cert, &key).unwrap())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let watcher = server
        .tls()
        .unwrap()
        .watch_files(&cert, &key, None, Duration::from_millis(50));
    let https = format!("https://localhost:{}", server.local_addr().port());
    let trusting = |pki: &pki::Pki| {
        remote(
            &https,
            ChannelConfig::default().with_tls(ClientTls::new(pki.ca.clone())),
        )
        .unwrap()
    };
    let served =
        |result: Result<mawex::TaskView, ApiError>| matches!(result, Err(ApiError::NotFound(_)));
    assert!(served(trusting(&old).get(mawex::TaskId::new()).await));
    assert!(!served(trusting(&new).get(mawex::TaskId::new()).await));

    std::fs::write(&key, &new.server.1).unwrap();
    std::fs::write(&cert, &new.server.0).unwrap();
    wait_for("the new certificate to be served", || {
        let client = trusting(&new);
        async move { served(client.get(mawex::TaskId::new()).await).then_some(()) }
    })
    .await;
    assert!(!served(trusting(&old).get(mawex::TaskId::new()).await));
    watcher.abort();
    server.shutdown().await.unwrap();
    m.shutdown().await;
}

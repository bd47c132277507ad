//! The composable server: a listener and a shutdown future from the caller, an interceptor in
//! front of the mawex services, and extra services on the same port.

mod common;

use std::time::Duration;

use common::{group, TestMaster};
use mawex::testing::proto::master_client::MasterClient;
use mawex::{MasterProxy, RemoteConfig, RemoteMasterProxy, Server, TaskSpec};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

const TOKEN: &str = "Bearer s3cret";

fn check_token(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get("authorization") {
        Some(value) if value == TOKEN => Ok(request),
        _ => Err(Status::unauthenticated("a valid token is required")),
    }
}

#[tokio::test]
async fn interceptor_extra_services_and_a_caller_owned_listener() {
    let master = TestMaster::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    // An extra service on the same port: the older reflection protocol.
    let extra = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mawex::testing::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("reflection v1alpha");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new(master.master())
            .interceptor(check_token)
            .add_service(extra)
            .serve(listener, async {
                let _ = stopped.await;
            }),
    );
    let channel = Channel::from_shared(endpoint.clone())
        .expect("endpoint")
        .connect_lazy();

    // Without the token the mawex services refuse, with the interceptor's own status.
    let mut config = RemoteConfig::default();
    config.retry_for = Duration::from_secs(2);
    let anonymous = RemoteMasterProxy::with_config([endpoint.as_str()], config).expect("client");
    let refused = anonymous
        .submit(TaskSpec::new(group("g"), "noop", "x"))
        .await
        .expect_err("no token, no submit");
    assert_eq!(
        refused,
        mawex::ApiError::Unauthenticated("a valid token is required".into())
    );

    // With it they answer.
    let mut client = MasterClient::with_interceptor(channel.clone(), |mut r: Request<()>| {
        r.metadata_mut()
            .insert("authorization", MetadataValue::from_static(TOKEN));
        Ok(r)
    });
    let summary = client
        .failed_summary(mawex::testing::proto::FailedSummaryRequest {})
        .await
        .expect("an authorised call is served");
    assert!(summary.into_inner().counts.is_empty());

    // Health stays open, and the extra service is served beside the mawex ones.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("the extra service answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list, got {answer:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == "mawex.v1.Master"),
        "{list:?}"
    );

    // The caller's shutdown future ends `serve`.
    stop.send(()).expect("the server is running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after its shutdown future completes")
        .expect("the server task")
        .expect("served cleanly");
    master.shutdown().await;
}

#[tokio::test]
async fn a_message_limit_below_the_payload_limit_is_refused() {
    let master = TestMaster::start().await;
    let mut config = mawex::ServerConfig::default();
    config.max_message_bytes = 1024;
    let err = Server::new(master.master())
        .config(config)
        .start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect_err("too small for the largest payload");
    assert!(matches!(err, mawex::ServerError::Config(_)), "{err}");
    assert!(err.to_string().contains("max_message_bytes"), "{err}");
    master.shutdown().await;
}

/// A channel that reached the server and heard from its health service, or why not.
async fn healthy_channel(endpoint: &str) -> Result<Channel, String> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("health: {e}"))?;
    Ok(channel)
}

/// Two connections under `config` are served, a third is closed at once while those open
/// are still served, and closing one makes room.
async fn two_connections_then_no_more(config: mawex::ServerConfig) {
    let master = TestMaster::start().await;
    let server = Server::new(master.master())
        .config(config)
        .start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("serve");
    let endpoint = server.endpoint();
    let first = healthy_channel(&endpoint).await.expect("first connection");
    let second = healthy_channel(&endpoint).await.expect("second connection");
    assert_eq!(server.open_connections(), 2);
    let third = tokio::time::timeout(Duration::from_secs(20), healthy_channel(&endpoint))
        .await
        .expect("a refused connection fails at once, it does not hang");
    assert!(third.is_err(), "a third connection was served");
    assert_eq!(server.open_connections(), 2);
    // Those open are still served.
    HealthClient::new(second.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("an open connection is served");
    drop(first);
    let again = common::wait_for("a closed connection to make room", || {
        let endpoint = endpoint.clone();
        async move { healthy_channel(&endpoint).await.ok() }
    })
    .await;
    assert_eq!(server.open_connections(), 2);
    drop((again, second));
    server.shutdown().await.expect("server stops");
    master.shutdown().await;
}

/// A client opening connection after connection gets `max_connections` of them.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_on_accept() {
    let mut config = mawex::ServerConfig::default();
    config.max_connections = 2;
    two_connections_then_no_more(config).await;
}

/// One peer address may hold at most `max_connections_per_peer` connections, however many
/// the server could take, so one host cannot take every place.
#[tokio::test]
async fn connections_of_one_peer_are_bounded() {
    let mut config = mawex::ServerConfig::default();
    config.max_connections_per_peer = 2;
    two_connections_then_no_more(config).await;
}

/// One connection may carry at most `max_concurrent_streams` calls at once: a client with
/// more waits for a stream to end instead of making the server hold them all.
#[tokio::test]
async fn streams_of_one_connection_are_bounded() {
    let master = TestMaster::start().await;
    let mut config = mawex::ServerConfig::default();
    config.max_concurrent_streams = 2;
    let server = Server::new(master.master())
        .config(config)
        .start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("serve");
    let client =
        std::sync::Arc::new(RemoteMasterProxy::connect(&server.endpoint()).expect("client"));
    let g = group("nobody");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            client
                .submit(TaskSpec::new(g.clone(), "noop", "x"))
                .await
                .expect("submit")
                .id,
        );
    }
    let waits: Vec<_> = ids
        .iter()
        .map(|&id| {
            let client = client.clone();
            tokio::spawn(async move { client.await_result(id).await })
        })
        .collect();
    common::wait_for("two waits on the server", || {
        let n = master.master().in_flight().waiting;
        async move { (n == 2).then_some(()) }
    })
    .await;
    // The third has no stream: round trips on a connection of their own go through while
    // it waits, and it never reaches the server.
    let other = RemoteMasterProxy::connect(&server.endpoint()).expect("second client");
    for _ in 0..20 {
        other
            .get(ids[0])
            .await
            .expect("another connection is served");
        assert_eq!(master.master().in_flight().waiting, 2);
    }
    // Ending every task lets it in, and every wait is answered.
    for &id in &ids {
        master.proxy().cancel(id).await.expect("cancel");
    }
    for wait in waits {
        let result = wait
            .await
            .expect("wait task")
            .expect("every wait is answered");
        assert!(ids.contains(&result.id));
    }
    drop(client);
    server.shutdown().await.expect("server stops");
    master.shutdown().await;
}

/// A socket that connects and says nothing cannot hold a connection for ever: it is closed
/// after `first_bytes_timeout`, and its place goes to a real client.
#[tokio::test]
async fn a_silent_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let master = TestMaster::start().await;
    let mut config = mawex::ServerConfig::default();
    config.max_connections = 1;
    config.first_bytes_timeout = Duration::from_millis(300);
    let server = Server::new(master.master())
        .config(config)
        .start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("serve");
    let mut silent = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    common::wait_for("the silent connection to be counted", || {
        let n = server.open_connections();
        async move { (n == 1).then_some(()) }
    })
    .await;
    // The server speaks first (its HTTP/2 settings), then hangs up on a peer that doesn't.
    let mut heard = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut heard))
        .await
        .expect("the server closes a silent connection");
    let channel = common::wait_for("room for a real client", || {
        let endpoint = server.endpoint();
        async move { healthy_channel(&endpoint).await.ok() }
    })
    .await;
    drop(channel);
    server.shutdown().await.expect("server stops");
    master.shutdown().await;
}

//! Malformed and hostile input over the wire: clear errors or silence, never a panic and
//! never corrupt state.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::*;
use mawex::testing::proto::master_client::MasterClient;
use mawex::testing::proto::pod_link_client::PodLinkClient;
use mawex::testing::proto::{self, master_to_pod, pod_to_master};
use mawex::{MasterProxy, Outcome, PodConfig, TaskSpec};
use tokio::sync::mpsc;
use tonic::Code;

async fn raw_client(m: &TestMaster) -> MasterClient<tonic::transport::Channel> {
    MasterClient::connect(m.endpoint())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
}

fn spec(id: &str, group: &str) -> proto::TaskSpec {
    proto::TaskSpec {
        id: id.into(),
        group: group.into(),
        handler: "echo".into(),
        payload: mawex::Bytes::from_static(b"x"),
        priority: 0,
        limits: None,
        retry: None,
        run_at_ms: None,
        dedup: None,
        fairness_key: None,
        sandbox: None,
        after: Vec::new(),
        output_limit: None,
    }
}

async fn submit(
    client: &mut MasterClient<tonic::transport::Channel>,
    task: Option<proto::TaskSpec>,
) -> tonic::Status {
    client
        .submit(proto::SubmitRequest { task })
        .await
        .expect_err("the submit must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_requests_get_clear_errors() {
    let m = TestMaster::start_on(Transport::Grpc).await;
    let mut c = raw_client(&m).await;
    let good_id = mawex::TaskId::new().to_string();

    for (task, needle) in [
        (None, "task is required"),
        (Some(spec("", "g")), "task.id is required"),
        (Some(spec("not-a-uuid", "g")), "not a UUID"),
        (
            Some(spec("00000000-0000-0000-0000-000000000000", "g")),
            "nil",
        ),
        (Some(spec(&good_id, "")), "group"),
        (Some(spec(&good_id, "no spaces")), "group"),
    ] {
        let status = submit(&mut c, task).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} in {status:?}"
        );
    }

    let mut big = spec(&good_id, "g");
    big.payload = vec![0; m.config.max_payload_bytes + 1].into();
    let status = submit(&mut c, Some(big)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("payload"), "{status:?}");

    let mut huge = spec(&good_id, "g");
    huge.payload = vec![0; 20 << 20].into();
    let status = submit(&mut c, Some(huge)).await;
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );

    let status = c
        .list(proto::ListRequest {
            group: None,
            state: 42,
            after: None,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("unknown task state 42"),
        "{status:?}"
    );

    let status = c
        .get(proto::TaskIdRequest {
            id: good_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let status = c
        .submit_batch(proto::SubmitBatchRequest {
            tasks: vec![
                spec(&mawex::TaskId::new().to_string(), "g"),
                spec("bad", "g"),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("#1"), "{status:?}");

    assert_eq!(m.stats().counts, Default::default(), "nothing was accepted");
    m.shutdown().await;
}

/// A hand-driven pod stream.
struct RawPod {
    tx: mpsc::UnboundedSender<proto::PodToMaster>,
    rx: tonic::Streaming<proto::MasterToPod>,
}

impl RawPod {
    async fn open(m: &TestMaster, first: pod_to_master::Message) -> Result<RawPod, tonic::Status> {
        let mut client = PodLinkClient::connect(m.endpoint()).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(proto::PodToMaster {
            message: Some(first),
        })
        .unwrap();
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let rx = client.session(outbound).await?.into_inner();
        Ok(RawPod { tx, rx })
    }

    fn send(&self, message: pod_to_master::Message) {
        self.tx
            .send(proto::PodToMaster {
                message: Some(message),
            })
            .unwrap();
    }

    async fn next(&mut self) -> Option<master_to_pod::Message> {
        match tokio::time::timeout(DEADLINE, self.rx.message()).await {
            Ok(Ok(Some(m))) => m.message,
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!("no message from the master"),
        }
    }
}

fn hello(pod: &str, group: &str) -> pod_to_master::Message {
    pod_to_master::Message::Hello(proto::PodHello {
        pod: pod.into(),
        groups: vec![group.into()],
        slots: 1,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pods_are_refused_or_ignored() {
    let m = TestMaster::start_on(Transport::Grpc).await;

    // A stream must open with a hello, and a valid one.
    let not_hello = pod_to_master::Message::Leave(proto::Leave {});
    let status = RawPod::open(&m, not_hello).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = RawPod::open(&m, hello("bad id!", "g")).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut zero = proto::PodHello {
        pod: "p".into(),
        groups: vec!["g".into()],
        ..Default::default()
    };
    zero.slots = 0;
    let status = RawPod::open(&m, pod_to_master::Message::Hello(zero))
        .await
        .err()
        .unwrap();
    assert!(status.message().contains("slots"), "{status:?}");

    // A pod that reports results of tasks it was never given, garbage, and a second hello.
    let g = group("hostile");
    let ack = m
        .proxy()
        .submit(TaskSpec::new(g.clone(), "echo", "real"))
        .await
        .unwrap();
    let mut liar = RawPod::open(&m, hello("p-liar", "elsewhere"))
        .await
        .unwrap();
    assert!(matches!(
        liar.next().await,
        Some(master_to_pod::Message::Welcome(_))
    ));
    let forged = |task: String, attempt: u32| {
        pod_to_master::Message::Finished(proto::Finished {
            attempt: Some(proto::AttemptRef { task, attempt }),
            outcome: Some(proto::Outcome {
                outcome: Some(proto::outcome::Outcome::Output(mawex::Bytes::from_static(
                    b"forged",
                ))),
            }),
        })
    };
    liar.send(forged(ack.id.to_string(), 1));
    liar.send(forged(mawex::TaskId::new().to_string(), 1));
    liar.send(forged(ack.id.to_string(), 0));
    liar.send(forged("garbage".into(), 1));
    liar.send(pod_to_master::Message::Finished(proto::Finished::default()));
    liar.send(hello("p-liar-2", "hostile"));
    liar.send(pod_to_master::Message::Heartbeat(proto::Heartbeat {
        holding: vec![proto::AttemptRef {
            task: ack.id.to_string(),
            attempt: 7,
        }],
        ..Default::default()
    }));
    // The forged results are acknowledged as stale (recorded nothing, nothing to resend),
    // and the stranger attempt in the heartbeat is answered with a cancel: the stream is
    // alive and the master processed everything before it.
    loop {
        match liar.next().await {
            // Acks of a batch follow its other messages, so some may come after the cancel.
            Some(master_to_pod::Message::Ack(a)) => {
                assert!(a.attempts.iter().all(|r| r.attempt == 1), "{a:?}");
            }
            Some(master_to_pod::Message::Cancel(r)) => {
                assert_eq!(r.attempt, 7);
                break;
            }
            other => panic!("expected acks and a cancel, got {other:?}"),
        }
    }
    assert_eq!(
        m.proxy().get(ack.id).await.unwrap().state,
        mawex::TaskState::Pending
    );

    // The same pod id registering twice: the newer session wins, the older is closed.
    let mut first = RawPod::open(&m, hello("p-twice", "other")).await.unwrap();
    assert!(matches!(
        first.next().await,
        Some(master_to_pod::Message::Welcome(_))
    ));
    let mut second = RawPod::open(&m, hello("p-twice", "other")).await.unwrap();
    assert!(matches!(
        second.next().await,
        Some(master_to_pod::Message::Welcome(_))
    ));
    assert!(first.next().await.is_none(), "the replaced session ends");

    // Through all of it the master stayed healthy: a real pod runs the real task.
    let (handlers, _, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-honest"), vec![g]), handlers);
    let result = m.proxy().await_result(ack.id).await.unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded("real".into()));
    drop((liar, second));
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let m = TestMaster::start_on(Transport::Grpc).await;
    let channel = tonic::transport::Endpoint::from_shared(m.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health_channel = channel.clone();
    let mut health = HealthClient::new(channel);
    for service in ["", "mawex.v1.Master", "mawex.v1.PodLink"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(health_channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "mawex.v1.Master",
        "mawex.v1.PodLink",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_answer_is_lost_is_retried_into_one_task() {
    let m = TestMaster::start_on(Transport::Grpc).await;
    let proxy = CutProxy::start(m.endpoint().trim_start_matches("http://").parse().unwrap()).await;
    let client = mawex::RemoteMasterProxy::connect(&format!("http://{}", proxy.addr)).unwrap();
    // Warm up: the connection and its HTTP/2 settings are in place.
    assert!(client.get(mawex::TaskId::new()).await.is_err());

    for submit_many in [false, true] {
        let spec = TaskSpec::new(group("lost-answer"), "echo", "x");
        proxy.arm();
        let ack = if submit_many {
            client.submit_many(vec![spec.clone()]).await.unwrap()[0]
        } else {
            client.submit(spec.clone()).await.unwrap()
        };
        assert_eq!(ack.id, spec.id);
        assert!(
            !ack.created,
            "the first try reached the master; the retry found the task there"
        );
    }
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(m.stats().counts.pending, 2, "exactly one task per submit");
    m.shutdown().await;
}

//! A journal that fails: the master stops instead of acknowledging what it could not record.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mawex::testing::{Event, MasterState, Recovered};
use mawex::{
    ApiError, CoreError, GroupName, Journal, Master, MasterProxy, MemoryJournal, Repaired, TaskSpec,
};

/// A memory journal whose appends fail once `broken` is set.
struct Flaky {
    inner: MemoryJournal,
    broken: Arc<AtomicBool>,
}

impl Journal for Flaky {
    fn recover(&mut self) -> Result<Recovered, CoreError> {
        self.inner.recover()
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("disk on fire").into());
        }
        self.inner.append(first_seq, events)
    }

    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        self.inner.snapshot(last_seq, state)
    }

    fn repair(&mut self) -> Result<Repaired, CoreError> {
        self.inner.repair()
    }
}

/// The error of a call to a master whose journal failed: it says so, and why.
fn says_why<T>(result: &Result<T, ApiError>) -> bool {
    matches!(result, Err(ApiError::Internal(m))
        if m.contains("the master stopped") && m.contains("disk on fire"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_is_never_acknowledged_and_stops_the_master() {
    let storage = MemoryJournal::new();
    let broken = Arc::new(AtomicBool::new(false));
    let journal = Flaky {
        inner: storage.clone(),
        broken: broken.clone(),
    };
    let master = Master::builder().start(journal).await.unwrap();
    let proxy = master.proxy();
    let g = GroupName::new("flaky").unwrap();
    let kept = proxy
        .submit(TaskSpec::new(g.clone(), "h", ""))
        .await
        .unwrap();

    broken.store(true, Ordering::SeqCst);
    let lost = proxy.submit(TaskSpec::new(g.clone(), "h", "")).await;
    // Every call answers at once, saying why.
    assert!(says_why(&lost), "{lost:?}");
    assert!(says_why(&proxy.get(kept.id).await));
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), master.stopped())
        .await
        .expect("Master::stopped resolves");
    assert!(reason.contains("disk on fire"), "{reason}");
    let err = master.shutdown().await.unwrap_err();
    assert!(matches!(err, CoreError::Storage(_)), "{err}");

    // What was acknowledged is in the journal; what was not, is not.
    let restarted = Master::builder().start(storage).await.unwrap();
    assert!(restarted.proxy().get(kept.id).await.is_ok());
    assert_eq!(restarted.stats().borrow().counts.pending, 1);
    restarted.shutdown().await.unwrap();
}

/// Over gRPC: health turns NOT_SERVING and a remote call gets the reason at once, instead
/// of retrying for its whole retry window against a master that will never answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_says_so_over_grpc() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let broken = Arc::new(AtomicBool::new(false));
    let journal = Flaky {
        inner: MemoryJournal::new(),
        broken: broken.clone(),
    };
    let master = Master::builder().start(journal).await.unwrap();
    let server = mawex::Server::new(&master)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let remote = mawex::RemoteMasterProxy::connect(&server.endpoint()).unwrap();
    let g = GroupName::new("flaky-grpc").unwrap();
    remote
        .submit(TaskSpec::new(g.clone(), "h", ""))
        .await
        .unwrap();

    broken.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let lost = remote.submit(TaskSpec::new(g, "h", "")).await;
    assert!(
        matches!(&lost, Err(ApiError::Internal(m)) if m.contains("disk on fire")),
        "{lost:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered at once, not after the retry window"
    );
    let channel = tonic::transport::Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    common::wait_for("health to turn NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            (status == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    server.shutdown().await.unwrap();
    let _ = master.shutdown().await;
}

/// Sequence numbers near 2^64 (only a damaged journal gets there) stop the master with a
/// clear error instead of wrapping around, which would write keys below the snapshot that
/// the next start-up skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_that_run_out_stop_the_master() {
    let mut storage = MemoryJournal::new();
    storage.snapshot(u64::MAX - 1, &MasterState::new()).unwrap();
    let master = Master::builder().start(storage).await.unwrap();
    let g = GroupName::new("end").unwrap();
    match master.proxy().submit(TaskSpec::new(g, "h", "")).await {
        Err(ApiError::Internal(m)) => assert!(m.contains("run out at 2^64"), "{m}"),
        other => panic!("a submit past the last sequence number: {other:?}"),
    }
    let reason = master.stopped().await;
    assert!(reason.contains("run out"), "{reason}");
    assert!(master.shutdown().await.is_err());
}

//! A journal that fails: the master stops instead of acknowledging what it could not record.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::{Arc, Condvar, Mutex};

use mawex::testing::{Event, MasterState, Recovered};
use mawex::{
    ApiError, CoreError, GroupName, Journal, Master, MasterProxy, MemoryJournal, Repaired, TaskSpec,
};

/// The error of a call to a master whose journal failed: it says so, and why.
fn says_why<T>(result: &Result<T, ApiError>) -> bool {
    matches!(result, Err(ApiError::Internal(m))
        if m.contains("the master stopped") && m.contains("disk on fire"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_is_never_acknowledged_and_stops_the_master() {
    let storage = MemoryJournal::new();
    let (journal, gate) = gated(storage.clone());
    let master = Master::builder().start(journal).await.unwrap();
    let proxy = master.proxy();
    let g = GroupName::new("flaky").unwrap();
    let kept = proxy
        .submit(TaskSpec::new(g.clone(), "h", ""))
        .await
        .unwrap();

    set(&gate, Gate::Fail);
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

    let (journal, gate) = gated(MemoryJournal::new());
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

    set(&gate, Gate::Fail);
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

/// How far [`HoldingClock`] has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Off,
    /// The next reading on the core thread stops there.
    Armed,
    /// The core thread waits inside a reading.
    Holding,
    /// Let go: readings on the core thread are counted.
    Released,
}

/// A clock that, once armed, holds the core thread inside its next reading, the start of a
/// batch's decisions, until released; then counts the core thread's readings, one per
/// batch decided (the core reads the clock for nothing else while no lease or timer is
/// due).
#[derive(Clone)]
struct HoldingClock {
    inner: Arc<mawex::clock::SystemClock>,
    state: Arc<(Mutex<(Hold, u32)>, Condvar)>,
}

impl HoldingClock {
    fn new() -> Self {
        HoldingClock {
            inner: Arc::new(mawex::clock::SystemClock::new()),
            state: Arc::new((Mutex::new((Hold::Off, 0)), Condvar::new())),
        }
    }

    fn set(&self, hold: Hold) {
        let (state, changed) = &*self.state;
        state.lock().unwrap().0 = hold;
        changed.notify_all();
    }

    fn get(&self) -> (Hold, u32) {
        *self.state.0.lock().unwrap()
    }
}

impl mawex::clock::Clock for HoldingClock {
    fn now(&self) -> mawex::Timestamp {
        if std::thread::current().name() == Some("mawex-core") {
            let (state, changed) = &*self.state;
            let mut state = state.lock().unwrap();
            match state.0 {
                Hold::Armed => {
                    state.0 = Hold::Holding;
                    changed.notify_all();
                    while state.0 == Hold::Holding {
                        state = changed.wait(state).unwrap();
                    }
                }
                Hold::Released => state.1 += 1,
                Hold::Off | Hold::Holding => {}
            }
        }
        self.inner.now()
    }
}

/// What [`Gated`] does with an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Stall,
    Fail,
}

/// A memory journal whose appends wait while its gate says `Stall`, and fail once it says
/// `Fail`.
struct Gated {
    inner: MemoryJournal,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

/// A gated journal over `inner`, open, and its gate.
fn gated(inner: MemoryJournal) -> (Gated, Arc<(Mutex<Gate>, Condvar)>) {
    let gate = Arc::new((Mutex::new(Gate::Open), Condvar::new()));
    let journal = Gated {
        inner,
        gate: gate.clone(),
    };
    (journal, gate)
}

fn set(gate: &(Mutex<Gate>, Condvar), to: Gate) {
    *gate.0.lock().unwrap() = to;
    gate.1.notify_all();
}

impl Journal for Gated {
    fn recover(&mut self) -> Result<Recovered, CoreError> {
        self.inner.recover()
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        let (gate, changed) = &*self.gate;
        let mut gate = gate.lock().unwrap();
        while *gate == Gate::Stall {
            gate = changed.wait(gate).unwrap();
        }
        if *gate == Gate::Fail {
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

/// The core decides the next batch while the journal writes the last one. What the next
/// batch lets out leaves only once the last one is durable: a read that saw a task still
/// in the journal is answered only if that task is kept.
async fn a_batch_decided_while_the_last_is_written(outcome: Gate) {
    let storage = MemoryJournal::new();
    let (journal, gate) = gated(storage.clone());
    let clock = HoldingClock::new();
    let master = Master::builder()
        .clock(Arc::new(clock.clone()))
        .start(journal)
        .await
        .unwrap();
    let proxy = master.proxy();
    let g = GroupName::new("pipelined").unwrap();
    let spec = TaskSpec::new(g.clone(), "h", "");
    let id = spec.id;

    // Hold the core as it starts deciding the submit, and queue reads behind it.
    set(&gate, Gate::Stall);
    clock.set(Hold::Armed);
    let mut submit = Box::pin(proxy.submit(spec));
    assert!(
        futures::poll!(&mut submit).is_pending(),
        "sent, not answered"
    );
    common::wait_for("the core to start deciding the submit", || async {
        (clock.get().0 == Hold::Holding).then_some(())
    })
    .await;
    let mut reads = Vec::new();
    for _ in 0..3 {
        let mut read = Box::pin(proxy.get(id));
        assert!(futures::poll!(&mut read).is_pending(), "sent, not answered");
        reads.push(read);
    }
    // The submit's batch goes to the journal, which stalls; the reads form the next batch,
    // decided meanwhile (a reading of the clock), and wait for the submit's.
    clock.set(Hold::Released);
    common::wait_for(
        "the reads to be decided while the journal stalls",
        || async { (clock.get().1 >= 1).then_some(()) },
    )
    .await;
    for read in &mut reads {
        assert!(
            futures::poll!(read).is_pending(),
            "nothing leaves before the submit is durable"
        );
    }
    assert!(futures::poll!(&mut submit).is_pending());

    set(&gate, outcome);
    let submitted = submit.await;
    let seen: Vec<_> = futures::future::join_all(reads).await;
    if outcome == Gate::Open {
        assert_eq!(submitted.unwrap().id, id);
        for view in seen {
            assert_eq!(view.unwrap().state, mawex::TaskState::Pending);
        }
        master.shutdown().await.unwrap();
    } else {
        assert!(says_why(&submitted), "{submitted:?}");
        for view in &seen {
            assert!(says_why(view), "a read of what was never durable: {view:?}");
        }
        assert!(master.shutdown().await.is_err());
        let restarted = Master::builder().start(storage).await.unwrap();
        assert!(restarted.proxy().get(id).await.is_err(), "not kept");
        restarted.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decided_while_the_last_is_written_leaves_once_that_is_durable() {
    a_batch_decided_while_the_last_is_written(Gate::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decided_while_the_last_fails_to_be_written_never_leaves() {
    a_batch_decided_while_the_last_is_written(Gate::Fail).await;
}

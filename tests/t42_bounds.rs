//! Hostile pods and clients cannot grow the master without bound: each bound is met by a
//! client that tries, and the offender is refused or disconnected while the master goes on.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::{Arc, Condvar, Mutex};

use common::*;
use mawex::pod::{session_backlog, AttemptRef, PodHello, PodMessage};
use mawex::testing::{Event, MasterState, Recovered};
use mawex::{
    ApiError, Attempt, BroadcastQuery, BroadcastSpec, Bytes, CoreError, InFlight, Journal,
    ListQuery, MemoryJournal, PodConfig, Repaired, TaskId, TaskSpec, MAX_LIST_LIMIT,
    MAX_LIST_PAGE_BYTES,
};

/// Stale reports per round: each round's acks are one message to the pod.
const REPORTS_PER_ROUND: usize = 64;

fn stale_report() -> PodMessage {
    PodMessage::Finished {
        attempt: AttemptRef {
            task: TaskId::new(),
            attempt: Attempt(1),
        },
        outcome: Ok("never asked for".into()),
    }
}

/// A pod that sends reports but never reads its stream: the master queues at most its
/// session's backlog of messages for it, then closes the session, and serves others on.
async fn a_pod_that_never_reads_is_disconnected(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let g = group("deaf");
    let hello = PodHello::new(pod_id("p-deaf"), vec![g.clone()]);
    let backlog = session_backlog(&hello);
    let deaf = m.connector().connect(hello).await.unwrap();
    let mut rounds = 0;
    loop {
        let pods = m.stats().pods;
        if !pods.iter().any(|p| p.id == pod_id("p-deaf")) {
            break;
        }
        // Transports buffer too (the pod's own inbox, HTTP/2 windows, sockets): the master
        // must give up well before a pod could make it hold unbounded messages.
        assert!(
            rounds < 20 * backlog,
            "the master still holds the session after {rounds} rounds of acks"
        );
        for _ in 0..REPORTS_PER_ROUND {
            let _ = deaf.outbox.send(stale_report());
        }
        // A round trip through the core: the reports above were one batch, so one ack.
        let _ = m.proxy().get(TaskId::new()).await;
        rounds += 1;
    }
    assert!(
        rounds > 1,
        "the session was closed for reading, not for sending"
    );
    // The master goes on for everyone else.
    let (handlers, _, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-reads"), vec![g.clone()]), handlers);
    let ack = m
        .proxy()
        .submit(TaskSpec::new(g, "echo", "still served"))
        .await
        .unwrap();
    let result = m.proxy().await_result(ack.id).await.unwrap();
    assert_eq!(
        result.outcome,
        mawex::Outcome::Succeeded("still served".into())
    );
    drop(deaf);
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_reads_is_disconnected_local() {
    a_pod_that_never_reads_is_disconnected(Transport::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_reads_is_disconnected_grpc() {
    a_pod_that_never_reads_is_disconnected(Transport::Grpc).await;
}

/// A pod that sends faster than the master handles its messages: at most its session's
/// backlog waits in the master's inbox; the next send is refused with a clear error and the
/// session closed (over gRPC the server then hangs up on the pod), and the master goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_floods_the_master_is_disconnected() {
    let m = TestMaster::start().await;
    let hello = PodHello::new(pod_id("p-flood"), vec![group("flood")]);
    let backlog = session_backlog(&hello);
    let flood = m.connector().connect(hello).await.unwrap();
    // Sending is far quicker than handling: the bound is met long before the loop ends.
    let refused = (0..100 * backlog).find_map(|_| flood.outbox.send(stale_report()).err());
    match refused {
        Some(ApiError::ResourceExhausted(m)) => {
            assert!(m.contains(&format!("{backlog} messages")), "{m}")
        }
        other => panic!("a flood of {} messages: {other:?}", 100 * backlog),
    }
    assert!(
        matches!(
            flood.outbox.send(stale_report()),
            Err(ApiError::Unavailable(_))
        ),
        "the session stays closed"
    );
    let mut inbox = flood.inbox;
    while inbox.recv().await.is_some() {}
    m.wait_stats("the flooding pod is gone", |s| s.pods.is_empty())
        .await;
    let ack = m
        .proxy()
        .submit(TaskSpec::new(group("flood"), "echo", "x"))
        .await
        .unwrap();
    assert!(m.proxy().get(ack.id).await.is_ok());
    drop(flood.outbox);
    m.shutdown().await;
}

/// A client opening stream after stream: at most `max_result_streams` are served at once,
/// the next is refused with a clear error, and closing one makes room again.
async fn result_streams_are_bounded(t: Transport) {
    const STREAMS: usize = 8;
    let mut config = fast_config();
    config.max_result_streams = STREAMS;
    let m = TestMaster::start_on_with(t, config).await;
    let g = group("streams");
    let mut open = Vec::new();
    for _ in 0..STREAMS {
        open.push(m.proxy().results(g.clone(), None).await.unwrap());
    }
    match m.proxy().results(g.clone(), None).await {
        Err(ApiError::ResourceExhausted(message)) => {
            assert!(message.contains("8 result streams"), "{message}")
        }
        Err(other) => panic!("stream {} beyond the bound: {other:?}", STREAMS + 1),
        Ok(_) => panic!("stream {} beyond the bound was served", STREAMS + 1),
    }
    drop(open.pop());
    let reopened = wait_for("a closed stream to make room", || {
        let proxy = m.proxy();
        let g = g.clone();
        async move { proxy.results(g, None).await.ok() }
    })
    .await;
    drop(reopened);
    drop(open);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_streams_are_bounded_local() {
    result_streams_are_bounded(Transport::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_streams_are_bounded_grpc() {
    result_streams_are_bounded(Transport::Grpc).await;
}

/// Large payloads cannot make a `list` page outgrow a message: pages end before they pass
/// `MAX_LIST_PAGE_BYTES`, every task still comes exactly once, and a caller who does not need
/// the bodies gets them all in one small page.
async fn list_pages_are_bounded_by_bytes(t: Transport) {
    const TASKS: usize = 40;
    const PAYLOAD: usize = 200 << 10;
    let m = TestMaster::start_on(t).await;
    let g = group("big");
    let mut submitted = Vec::new();
    for i in 0..TASKS {
        let mut payload = vec![b'b'; PAYLOAD];
        payload[0] = u8::try_from(i).unwrap();
        let ack = m
            .proxy()
            .submit(TaskSpec::new(g.clone(), "echo", payload))
            .await
            .unwrap();
        submitted.push(ack.id);
    }
    let mut seen = Vec::new();
    let mut query = ListQuery::default().group(g.clone()).limit(MAX_LIST_LIMIT);
    let mut pages = 0;
    loop {
        let page = m.proxy().list(query.clone()).await.unwrap();
        let bytes: usize = page.tasks.iter().map(|v| v.spec.payload.len()).sum();
        assert!(
            bytes <= MAX_LIST_PAGE_BYTES,
            "a page of {bytes} payload bytes"
        );
        assert!(page.tasks.iter().all(|v| v.spec.payload.len() == PAYLOAD));
        seen.extend(page.tasks.iter().map(|v| v.spec.id));
        pages += 1;
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert!(
        pages >= TASKS * PAYLOAD / MAX_LIST_PAGE_BYTES,
        "{pages} pages"
    );
    assert_eq!(seen, submitted, "every task once, in order");

    let lean = m
        .proxy()
        .list(
            ListQuery::default()
                .group(g)
                .limit(MAX_LIST_LIMIT)
                .without_bodies(),
        )
        .await
        .unwrap();
    assert_eq!(lean.next, None);
    assert_eq!(lean.tasks.len(), TASKS);
    assert!(lean
        .tasks
        .iter()
        .all(|v| v.spec.payload.is_empty() && v.spec.handler == "echo"));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_bounded_by_bytes_local() {
    list_pages_are_bounded_by_bytes(Transport::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_bounded_by_bytes_grpc() {
    list_pages_are_bounded_by_bytes(Transport::Grpc).await;
}

/// `list_broadcasts` pages (by count, from where the last page ended, by app), so a master
/// with many broadcasts answers in messages of bounded size; a bad limit is refused.
async fn broadcasts_are_listed_in_pages(t: Transport) {
    const BROADCASTS: u64 = 250;
    let m = TestMaster::start_on(t).await;
    for i in 0..BROADCASTS {
        // No pod serves the group: each broadcast has no target and ends at once.
        let app = if i % 5 == 0 { "rare" } else { "common" };
        let spec = BroadcastSpec::new(app, group("nobody"), "deploy").with_version(format!("v{i}"));
        m.proxy().fire_broadcast(spec).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut query = BroadcastQuery::default();
    loop {
        let page = m.proxy().list_broadcasts(query.clone()).await.unwrap();
        assert!(page.broadcasts.len() <= 100);
        seen.extend(page.broadcasts.iter().map(|b| b.id));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (1..=BROADCASTS).collect::<Vec<_>>(),
        "each once, oldest first"
    );
    let rare = m
        .proxy()
        .list_broadcasts(BroadcastQuery::default().app("rare").limit(1000))
        .await
        .unwrap();
    assert_eq!(rare.broadcasts.len(), 50);
    assert!(rare.broadcasts.iter().all(|b| b.app == "rare"));
    assert_eq!(rare.next, None);
    for limit in [0, 1001] {
        let refused = m
            .proxy()
            .list_broadcasts(BroadcastQuery::default().limit(limit))
            .await;
        assert!(
            matches!(&refused, Err(ApiError::InvalidArgument(m)) if m.contains("limit")),
            "limit {limit}: {refused:?}"
        );
    }
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_are_listed_in_pages_local() {
    broadcasts_are_listed_in_pages(Transport::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_are_listed_in_pages_grpc() {
    broadcasts_are_listed_in_pages(Transport::Grpc).await;
}

/// A memory journal whose appends wait while `stalled` is set: the core thread stops there,
/// as it would on a slow disk, and requests pile up in front of it.
struct Stalling {
    inner: MemoryJournal,
    stalled: Arc<(Mutex<bool>, Condvar)>,
}

impl Journal for Stalling {
    fn recover(&mut self) -> Result<Recovered, CoreError> {
        self.inner.recover()
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        let (stalled, changed) = &*self.stalled;
        let mut stalled = stalled.lock().unwrap();
        while *stalled {
            stalled = changed.wait(stalled).unwrap();
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

fn set_stalled(gate: &(Mutex<bool>, Condvar), stalled: bool) {
    *gate.0.lock().unwrap() = stalled;
    gate.1.notify_all();
}

/// While the journal stalls, requests pile up in front of the core: at most
/// `max_requests_in_flight` of them, even from callers that gave up; the next is refused at
/// once. None of those taken in is lost when the journal goes on.
async fn requests_in_flight_are_bounded(t: Transport) {
    const REQUESTS: usize = 4;
    let mut config = fast_config();
    config.max_requests_in_flight = REQUESTS;
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let journal = Stalling {
        inner: MemoryJournal::new(),
        stalled: gate.clone(),
    };
    let m = TestMaster::start_on_journal(t, config, journal).await;
    let g = group("stalled");
    set_stalled(&gate, true);
    let mut kept = Vec::new();
    for i in 0..REQUESTS {
        let spec = TaskSpec::new(g.clone(), "noop", Bytes::new());
        let id = spec.id;
        let proxy = m.proxy();
        let submit = tokio::spawn(async move { proxy.submit(spec).await });
        // One at a time, so that each is a request of its own (a remote client gathers
        // concurrent submits into one).
        wait_for("the request to be taken in", || {
            let n = m.master().in_flight().requests;
            async move { (n > i).then_some(()) }
        })
        .await;
        if i % 2 == 0 {
            kept.push((id, Some(submit)));
        } else {
            // A caller that gives up: its request still waits in the inbox, and counts.
            submit.abort();
            kept.push((id, None));
        }
    }
    wait_for("every request taken in", || {
        let n = m.master().in_flight().requests;
        async move { (n == REQUESTS).then_some(()) }
    })
    .await;
    let refused = m.proxy().get(TaskId::new()).await;
    assert!(
        matches!(&refused, Err(ApiError::ResourceExhausted(msg))
            if msg.contains("4 requests in flight") && msg.contains("max_requests_in_flight")),
        "{refused:?}"
    );
    let refused = m
        .connector()
        .connect(PodHello::new(pod_id("late"), vec![g.clone()]))
        .await;
    assert!(
        matches!(&refused, Err(ApiError::ResourceExhausted(_))),
        "a hello is a request too: {:?}",
        refused.map(|_| ())
    );
    set_stalled(&gate, false);
    for (id, submit) in kept {
        if let Some(submit) = submit {
            assert_eq!(submit.await.unwrap().unwrap().id, id);
        }
        // Taken in means not lost, whether or not its caller heard the answer.
        let got = m.proxy().get(id).await;
        assert!(got.is_ok(), "task {id} was lost: {got:?}");
    }
    assert_eq!(m.master().in_flight(), InFlight::default());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_local() {
    requests_in_flight_are_bounded(Transport::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_grpc() {
    requests_in_flight_are_bounded(Transport::Grpc).await;
}

/// Calls that wait (for a result, for a broadcast) have a budget of their own: once
/// `max_waiting_calls` wait, the next is refused at once, other requests are still served,
/// and a wait that ends makes room.
async fn waiting_calls_are_bounded(t: Transport) {
    const WAITS: usize = 3;
    let mut config = fast_config();
    config.max_waiting_calls = WAITS;
    let m = TestMaster::start_on_with(t, config).await;
    // No pod serves the group: its tasks wait for ever.
    let g = group("nobody");
    let mut ids = Vec::new();
    for _ in 0..=WAITS {
        ids.push(
            m.proxy()
                .submit(TaskSpec::new(g.clone(), "noop", Bytes::new()))
                .await
                .unwrap()
                .id,
        );
    }
    let waiting: Vec<_> = ids[..WAITS]
        .iter()
        .map(|&id| {
            let proxy = m.proxy();
            tokio::spawn(async move { proxy.await_result(id).await })
        })
        .collect();
    wait_for("every wait taken in", || {
        let n = m.master().in_flight().waiting;
        async move { (n == WAITS).then_some(()) }
    })
    .await;
    let refused = m.proxy().await_result(ids[WAITS]).await;
    assert!(
        matches!(&refused, Err(ApiError::ResourceExhausted(msg))
            if msg.contains("3 calls already wait") && msg.contains("max_waiting_calls")),
        "{refused:?}"
    );
    let refused = m
        .proxy()
        .wait_broadcast(1, std::time::Duration::from_secs(60))
        .await;
    assert!(
        matches!(&refused, Err(ApiError::ResourceExhausted(_))),
        "{refused:?}"
    );
    // Other requests have their own budget.
    assert!(m.proxy().get(ids[WAITS]).await.is_ok());
    // One wait ends, and another may start.
    m.proxy().cancel(ids[0]).await.unwrap();
    let mut waiting = waiting.into_iter();
    let first = waiting.next().unwrap().await.unwrap().unwrap();
    assert_eq!(first.id, ids[0]);
    let proxy = m.proxy();
    let last = ids[WAITS];
    let admitted = tokio::spawn(async move { proxy.await_result(last).await });
    wait_for("the new wait taken in", || {
        let n = m.master().in_flight().waiting;
        async move { (n == WAITS).then_some(()) }
    })
    .await;
    for &id in &ids[1..] {
        m.proxy().cancel(id).await.unwrap();
    }
    for wait in waiting.chain([admitted]) {
        assert!(wait.await.unwrap().is_ok());
    }
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_are_bounded_local() {
    waiting_calls_are_bounded(Transport::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_are_bounded_grpc() {
    waiting_calls_are_bounded(Transport::Grpc).await;
}

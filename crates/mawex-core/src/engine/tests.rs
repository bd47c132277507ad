//! Command in, exact events out.

use std::time::Duration;

use bytes::Bytes;
use mawex_api::pod::{AttemptRef, MasterMessage, PodCredential, PodHello, PodMessage};
use mawex_api::{
    ApiError, Attempt, CancelAck, ErrorKind, GroupName, Outcome, PodId, RetryPolicy, TaskError,
    TaskSpec, TaskState, Timestamp,
};

use super::{Engine, EngineConfig, Output};
use crate::state::{Event, MasterState, RequeueReason};

mod workflows;

const LEASE: Duration = Duration::from_secs(10);
const T0: Timestamp = Timestamp(1_000_000);

fn engine() -> Engine {
    Engine::new(
        MasterState::new(),
        EngineConfig {
            lease_timeout: LEASE,
            recovery_grace: Duration::ZERO,
            // Immediate retries keep expected events exact; backoff has tests of its own.
            default_retry: RetryPolicy::new(3)
                .with_base_delay(Duration::ZERO)
                .with_max_delay(Duration::ZERO),
            result_retention: Duration::from_secs(3600),
            max_payload_bytes: 1024,
            max_pods: 10_000,
        },
        T0,
    )
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

fn pod(name: &str) -> PodId {
    PodId::new(name).unwrap()
}

fn spec(g: &str) -> TaskSpec {
    TaskSpec::new(group(g), "h", Bytes::from_static(b"x"))
}

/// The state `events` build, applied in order to an empty one: what a restart without a
/// snapshot recovers. Its derived indexes are the ones `apply` kept, not rebuilt.
fn replayed(events: &[Event]) -> MasterState {
    let mut state = MasterState::new();
    events.iter().for_each(|event| state.apply(event));
    state
}

fn at(ms: u64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

fn hello(name: &str, groups: &[&str], slots: u32) -> PodHello {
    let mut h = PodHello::new(pod(name), groups.iter().map(|g| group(g)).collect());
    h.slots = slots;
    h
}

fn attempt(spec: &TaskSpec, n: u32) -> AttemptRef {
    AttemptRef {
        task: spec.id,
        attempt: Attempt(n),
    }
}

/// The event of attempt 1 of `a` losing its lease at `at`, retried at once (test policy).
fn lease_lost(a: &TaskSpec, at: Timestamp, message: &str) -> Event {
    Event::TaskRetryScheduled {
        attempt: attempt(a, 1).into(),
        error: TaskError::new(ErrorKind::LeaseExpired, message).into(),
        retry_at: at,
        at,
    }
}

/// Attempt `n` of `spec` succeeded with an empty output.
fn finished(spec: &TaskSpec, n: u32) -> PodMessage {
    PodMessage::Finished {
        attempt: attempt(spec, n),
        outcome: Ok(Bytes::new()),
    }
}

/// Submits `spec`, connects pod `p1` on session 1, dispatches; returns the engine.
fn running(spec: &TaskSpec) -> Engine {
    let mut e = engine();
    let mut out = Output::default();
    e.submit(vec![spec.clone()], T0, &mut out).unwrap();
    e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
        .unwrap();
    e.dispatch(T0, &mut out);
    assert_eq!(e.state().task(&spec.id).unwrap().state, TaskState::Running);
    e
}

/// A pod that claims to hold more attempts than any pod can is refused at hello, and one
/// whose heartbeat claims more than it can hold is disconnected, instead of being answered
/// with a Cancel per bogus attempt.
#[test]
fn claims_beyond_a_pods_capacity_are_refused() {
    let bogus = |n: usize| -> Vec<AttemptRef> {
        (0..n)
            .map(|_| AttemptRef {
                task: mawex_api::TaskId::new(),
                attempt: Attempt(1),
            })
            .collect()
    };
    let mut e = engine();
    let mut out = Output::default();
    let most = 2 * (mawex_api::pod::MAX_POD_SLOTS + mawex_api::pod::MAX_POD_PREFETCH) as usize;
    let mut greedy = hello("greedy", &["g"], 1);
    greedy.holding = bogus(most + 1);
    match e.pod_hello(1, greedy, T0, &mut out) {
        Err(ApiError::InvalidArgument(m)) => assert!(m.contains("no pod holds more"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    e.pod_hello(2, hello("noisy", &["g"], 1), T0, &mut out)
        .unwrap();
    let mut out = Output::default();
    let heartbeat = PodMessage::Heartbeat {
        holding: bogus(10_000),
        received: 0,
        usage: None,
    };
    e.pod_message(2, heartbeat, at(1), &mut out);
    assert_eq!(out.closed_sessions, vec![2], "the pod is disconnected");
    assert!(out.messages.is_empty(), "no Cancel per bogus attempt");
}

/// A loop of hellos with new names fills `max_pods` and no more: one more pod is refused
/// with a clear error, a connected pod may still reconnect, and a pod that went silent makes
/// room after its lease.
#[test]
fn pods_beyond_max_pods_are_refused() {
    const MAX_PODS: usize = 8;
    let mut e = engine();
    e.config.max_pods = MAX_PODS;
    let mut out = Output::default();
    for i in 0..MAX_PODS {
        e.pod_hello(
            i as u64 + 1,
            hello(&format!("p{i}"), &["g"], 1),
            T0,
            &mut out,
        )
        .unwrap();
    }
    match e.pod_hello(100, hello("one-more", &["g"], 1), T0, &mut out) {
        Err(ApiError::ResourceExhausted(m)) => {
            assert!(m.contains("serves 8 pods") && m.contains("max_pods"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(e.pods.len(), MAX_PODS);
    e.pod_hello(101, hello("p0", &["g"], 1), at(1), &mut out)
        .expect("a connected pod reconnects");
    // Everyone but p0 goes silent past the lease.
    e.pod_message(
        101,
        PodMessage::Heartbeat {
            holding: Vec::new(),
            received: 0,
            usage: None,
        },
        at(LEASE.as_millis() as u64 - 1),
        &mut out,
    );
    e.tick(at(LEASE.as_millis() as u64), &mut out);
    assert_eq!(e.pods.len(), 1);
    e.pod_hello(
        102,
        hello("one-more", &["g"], 1),
        at(LEASE.as_millis() as u64),
        &mut out,
    )
    .expect("room again");
}

/// A pod id belongs to the credential that registered it while the pod is connected and
/// for the retention after it left: a hello with another credential is refused and changes
/// nothing; after the lease the id is free.
#[test]
fn a_pod_id_belongs_to_the_credential_that_registered_it() {
    let a = spec("g");
    let mut e = engine();
    let mut out = Output::default();
    e.submit(vec![a.clone()], T0, &mut out).unwrap();
    let with = |credential: &str| {
        let mut h = hello("p1", &["g"], 1);
        h.credential = Some(PodCredential::token(credential));
        h
    };
    e.pod_hello(1, with("fleet-a"), T0, &mut out).unwrap();
    e.dispatch(T0, &mut out);
    assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Running);
    match e.pod_hello(2, with("fleet-b"), at(1), &mut out) {
        Err(ApiError::PermissionDenied(m)) => assert!(m.contains("another credential"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        e.session_of(&pod("p1")),
        Some(1),
        "the owner keeps its session"
    );
    assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Running);
    // The owner reconnects; then it leaves. Past a lease the id is still its own (state
    // may name the pod for as long as results are kept); past the retention it is free.
    e.pod_hello(3, with("fleet-a"), at(2), &mut out).unwrap();
    e.pod_disconnected(3, at(3));
    assert!(e.pod_hello(4, with("fleet-b"), at(4), &mut out).is_err());
    let after_lease = at(3 + 2 * LEASE.as_millis() as u64);
    e.tick(after_lease, &mut out);
    assert!(e
        .pod_hello(5, with("fleet-b"), after_lease, &mut out)
        .is_err());
    let later = at(3 + 3_600_000 + 1);
    e.tick(later, &mut out);
    e.pod_hello(6, with("fleet-b"), later, &mut out)
        .expect("free after the retention");
}

/// Who may use a bound pod id, compared on the strongest factor both sides have: turning
/// mutual TLS on rebinds an id to the first certificate its token brings; then another
/// certificate is refused even with the same token; the same certificate with a renamed
/// token is the owner; with no factor in common nothing proves the owner.
#[test]
fn a_bound_pod_id_is_claimed_by_its_strongest_factor() {
    let mut e = engine();
    let mut out = Output::default();
    let mut session = 0;
    let mut say = |e: &mut Engine, credential: PodCredential, out: &mut Output| {
        session += 1;
        let mut h = hello("p1", &["g"], 1);
        h.credential = Some(credential);
        let said = e.pod_hello(session, h, T0, out);
        e.pod_disconnected(session, T0);
        said
    };
    let bound = |out: &Output| {
        out.events
            .iter()
            .filter(|e| matches!(e, Event::PodBound { .. }))
            .count()
    };
    say(&mut e, PodCredential::token("fleet"), &mut out).unwrap();
    assert_eq!(bound(&out), 1, "the first hello binds the id");
    say(&mut e, PodCredential::token("fleet"), &mut out).unwrap();
    assert_eq!(bound(&out), 1, "the same credential binds nothing new");
    let host_a = || PodCredential::token("fleet").with_certificate("dns:host-a");
    say(&mut e, host_a(), &mut out).expect("the token proves the owner");
    assert_eq!(bound(&out), 2, "rebound to the certificate");
    let host_b = PodCredential::token("fleet").with_certificate("dns:host-b");
    assert!(matches!(
        say(&mut e, host_b, &mut out),
        Err(ApiError::PermissionDenied(_))
    ));
    let renamed = PodCredential::token("fleet-2026").with_certificate("dns:host-a");
    say(&mut e, renamed, &mut out).expect("the certificate proves the owner");
    assert!(matches!(
        say(&mut e, PodCredential::token("fleet"), &mut out),
        Err(ApiError::PermissionDenied(_))
    ));
    say(&mut e, PodCredential::token("fleet-2026"), &mut out)
        .expect("mutual TLS turned off: the token proves the owner");
    assert!(
        matches!(
            say(&mut e, PodCredential::certificate("dns:host-a"), &mut out),
            Err(ApiError::PermissionDenied(_))
        ),
        "no factor in common"
    );
    assert_eq!(
        e.state().pod_owner(&pod("p1")),
        Some(&crate::state::stored::PodOwner {
            token: Some("fleet-2026".into()),
            certificate: None
        })
    );
}

/// A restarted engine keeps who owns a pod id (it is state) and counts the pod away from
/// its start, so the id is freed after the retention as it would have been.
#[test]
fn a_restart_keeps_pod_owners_and_frees_them_after_the_retention() {
    let mut e = engine();
    let mut out = Output::default();
    let with = |token: &str| {
        let mut h = hello("p1", &["g"], 1);
        h.credential = Some(PodCredential::token(token));
        h
    };
    e.pod_hello(1, with("fleet-a"), T0, &mut out).unwrap();
    let mut e = Engine::new(replayed(&out.events), engine().config.clone(), at(10));
    let mut out = Output::default();
    assert!(e.pod_hello(2, with("fleet-b"), at(20), &mut out).is_err());
    let later = at(10 + 3_600_000 + 1);
    e.tick(later, &mut out);
    assert!(out
        .events
        .iter()
        .any(|ev| matches!(ev, Event::PodsForgotten { pods } if pods.contains(&pod("p1")))));
    e.pod_hello(3, with("fleet-b"), later, &mut out)
        .expect("free after the retention");
}

/// Owned pod ids are bounded: a fleet that takes a fresh id on every start makes the ids
/// away longest be forgotten before their retention ends.
#[test]
fn owned_pod_ids_are_bounded() {
    let mut e = engine();
    e.config.max_pods = 2;
    let mut out = Output::default();
    for i in 0..20_u64 {
        let mut h = hello(&format!("p{i}"), &["g"], 1);
        h.credential = Some(PodCredential::token("fleet"));
        e.pod_hello(i, h, at(i), &mut out).unwrap();
        e.pod_disconnected(i, at(i));
    }
    assert_eq!(e.state().owned_pod_count(), 20);
    // Away for more than a lease, well within the retention.
    let now = at(100 + 2 * LEASE.as_millis() as u64);
    e.tick(now, &mut out);
    e.tick(now, &mut out);
    assert_eq!(e.state().owned_pod_count(), 8, "4 per place of max_pods");
    assert!(
        e.state().pod_owner(&pod("p19")).is_some(),
        "the newest stay"
    );
    assert!(e.state().pod_owner(&pod("p0")).is_none(), "the oldest go");
}

/// A token may have at most its `max_pods` pods connected, whatever credential each pod
/// proved (its certificate's subject, say): one more is refused, its pods may reconnect,
/// and one that leaves makes room.
#[test]
fn a_token_has_at_most_its_pods() {
    let mut e = engine();
    let mut out = Output::default();
    let with = |name: &str| {
        let mut h = hello(name, &["g"], 1);
        h.credential = Some(
            PodCredential::token("fleet")
                .with_certificate(format!("cn:{name}"))
                .with_token_max_pods(2),
        );
        h
    };
    e.pod_hello(1, with("p1"), T0, &mut out).unwrap();
    e.pod_hello(2, with("p2"), T0, &mut out).unwrap();
    match e.pod_hello(3, with("p3"), T0, &mut out) {
        Err(ApiError::ResourceExhausted(m)) => {
            assert!(m.contains("token fleet has 2 pods"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another token is not held to this one's limit.
    let mut other = hello("q1", &["g"], 1);
    other.credential = Some(PodCredential::token("other").with_token_max_pods(2));
    e.pod_hello(4, other, T0, &mut out).unwrap();
    e.pod_hello(5, with("p1"), at(1), &mut out)
        .expect("a connected pod reconnects");
    e.pod_disconnected(5, at(2));
    e.pod_hello(6, with("p3"), at(3), &mut out)
        .expect("room once a pod left");
}

/// A pod id that comes back serving other groups does not keep the attempts of a group it
/// no longer serves: they are cancelled on the pod and run again elsewhere.
#[test]
fn a_pod_back_with_other_groups_keeps_no_attempt_of_the_old_ones() {
    let a = spec("g");
    let mut e = running(&a);
    let mut out = Output::default();
    e.pod_disconnected(1, at(1));
    let mut back = hello("p1", &["other"], 1);
    back.holding = vec![attempt(&a, 1)];
    e.pod_hello(2, back, at(2), &mut out).unwrap();
    assert!(out
        .messages
        .contains(&(2, MasterMessage::Cancel(attempt(&a, 1)))));
    let entry = e.state().task(&a.id).unwrap();
    assert_eq!(entry.state, TaskState::Pending, "back in its queue");
    assert_eq!(entry.pod(), None);
}

/// Pods that say hello once and leave for good are not remembered past a lease.
#[test]
fn departed_pods_are_forgotten_after_a_lease() {
    let mut e = engine();
    let mut out = Output::default();
    for i in 0..1_000u64 {
        e.pod_hello(i + 1, hello(&format!("once-{i}"), &["g"], 1), T0, &mut out)
            .unwrap();
        e.pod_disconnected(i + 1, T0);
    }
    assert_eq!(e.departed.len(), 1_000);
    e.tick(at(u64::try_from(LEASE.as_millis()).unwrap() - 1), &mut out);
    assert_eq!(e.departed.len(), 1_000, "kept while it matters");
    e.tick(at(u64::try_from(LEASE.as_millis()).unwrap()), &mut out);
    assert!(e.departed.is_empty(), "{} left", e.departed.len());
}

mod submit {
    use super::*;

    #[test]
    fn accepts_new_tasks_in_order() {
        let mut e = engine();
        let mut out = Output::default();
        let (a, b) = (spec("g"), spec("g"));
        let acks = e.submit(vec![a.clone(), b.clone()], T0, &mut out).unwrap();
        assert!(acks.iter().all(|a| a.created));
        assert_eq!(
            out.events,
            vec![
                Event::TaskAccepted {
                    spec: a.into(),
                    at: T0
                },
                Event::TaskAccepted {
                    spec: b.into(),
                    at: T0
                },
            ]
        );
    }

    /// Dedup keys are per group: one group's key never suppresses another group's submit
    /// (nor tells it the other task's id), in one batch or across batches and a load.
    #[test]
    fn dedup_keys_of_different_groups_never_meet() {
        let window = Duration::from_secs(60);
        let mut e = engine();
        let mut out = Output::default();
        let a = spec("a").with_dedup("nightly", window);
        let b = spec("b").with_dedup("nightly", window);
        let acks = e.submit(vec![a.clone(), b.clone()], T0, &mut out).unwrap();
        assert!(acks.iter().all(|ack| ack.created), "{acks:?}");
        let again = spec("b").with_dedup("nightly", window);
        let acks = e.submit(vec![again], at(1), &mut out).unwrap();
        assert!(acks[0].deduplicated);
        assert_eq!(acks[0].id, b.id, "held within its own group");
        let mut loaded = e.state().clone();
        loaded.rebuild_indexes();
        assert_eq!(&loaded, e.state());
        // Moving b to group a moves its key along: a's key changes hands (b was accepted
        // later), b's group has none left; as a rebuild from the tasks has it.
        let change = mawex_api::PendingChange::default().move_to(group("a"));
        e.update_pending(vec![b.id], change, &mut out).unwrap();
        let mut loaded = e.state().clone();
        loaded.rebuild_indexes();
        assert_eq!(&loaded, e.state());
        let fresh = e
            .submit(
                vec![spec("b").with_dedup("nightly", window)],
                at(2),
                &mut out,
            )
            .unwrap();
        assert!(fresh[0].created, "group b's key is free");
        let held = e
            .submit(
                vec![spec("a").with_dedup("nightly", window)],
                at(3),
                &mut out,
            )
            .unwrap();
        assert_eq!(
            held[0].id, b.id,
            "group a's key is held by the task moved in"
        );
    }

    /// The task that holds a dedup key is the last one accepted with it, whatever the ids
    /// (chosen by clients, so in any order); a load picks the same one as the live state.
    #[test]
    fn the_latest_task_of_a_dedup_key_holds_it_across_a_load() {
        let id = |n: u8| {
            let mut bytes = [0u8; 16];
            bytes[6] = 0x70;
            bytes[15] = n;
            mawex_api::TaskId::from_bytes(bytes).unwrap()
        };
        let window = Duration::from_secs(1);
        let mut e = engine();
        let mut out = Output::default();
        let first = spec("g").with_id(id(9)).with_dedup("nightly", window);
        e.submit(vec![first.clone()], T0, &mut out).unwrap();
        e.cancel(first.id, T0, &mut out).unwrap();
        // Past the window, a task with a lower id takes the key.
        let second = spec("g").with_id(id(1)).with_dedup("nightly", window);
        let acks = e.submit(vec![second.clone()], at(5_000), &mut out).unwrap();
        assert!(acks[0].created);

        let mut loaded = e.state().clone();
        loaded.rebuild_indexes();
        assert_eq!(&loaded, e.state(), "the load picks the same holder");
        let mut after = Engine::new(loaded, e.config.clone(), at(5_001));
        let third = spec("g").with_dedup("nightly", window);
        let acks = after
            .submit(vec![third], at(5_001), &mut Output::default())
            .unwrap();
        assert!(
            acks[0].deduplicated,
            "the live second task still holds the key"
        );
        assert_eq!(acks[0].id, second.id);
    }

    #[test]
    fn repeat_is_acknowledged_without_events() {
        let mut e = engine();
        let a = spec("g");
        e.submit(vec![a.clone()], T0, &mut Output::default())
            .unwrap();
        let mut out = Output::default();
        let acks = e
            .submit(vec![a.clone(), a.clone()], at(5), &mut out)
            .unwrap();
        assert!(acks.iter().all(|ack| !ack.created && ack.id == a.id));
        assert!(out.events.is_empty());
    }

    #[test]
    fn reused_id_with_other_spec_conflicts_and_batch_is_atomic() {
        let mut e = engine();
        let a = spec("g");
        e.submit(vec![a.clone()], T0, &mut Output::default())
            .unwrap();
        let mut out = Output::default();
        let other = spec("g").with_id(a.id).with_priority(9);
        let r = e.submit(vec![spec("g"), other], T0, &mut out);
        assert!(matches!(r, Err(ApiError::Conflict(m)) if m.contains("#1")));
        assert!(
            out.events.is_empty(),
            "nothing of a refused batch is accepted"
        );
        assert_eq!(e.state().len(), 1);
    }

    #[test]
    fn invalid_spec_is_refused_with_its_index() {
        let mut e = engine();
        let mut out = Output::default();
        let big = TaskSpec::new(group("g"), "h", vec![0u8; 2048]);
        let r = e.submit(vec![spec("g"), big], T0, &mut out);
        assert!(matches!(r, Err(ApiError::ResourceExhausted(m)) if m.contains("#1")));
        assert!(out.events.is_empty());
    }
}

mod dispatch {
    use super::*;

    #[test]
    fn nothing_is_leased_without_a_worker_of_the_group() {
        let mut e = engine();
        let mut out = Output::default();
        e.submit(vec![spec("g")], T0, &mut out).unwrap();
        e.pod_hello(1, hello("p1", &["other"], 1), T0, &mut out)
            .unwrap();
        out.events.clear();
        e.dispatch(T0, &mut out);
        assert!(out.events.is_empty());
    }

    #[test]
    fn leases_highest_priority_then_oldest_one_per_free_slot() {
        let mut e = engine();
        let mut out = Output::default();
        let (old, new, urgent) = (spec("g"), spec("g"), spec("g").with_priority(5));
        e.submit(vec![old.clone(), new.clone(), urgent.clone()], T0, &mut out)
            .unwrap();
        e.pod_hello(1, hello("p1", &["g"], 2), T0, &mut out)
            .unwrap();
        out.events.clear();
        e.dispatch(at(1), &mut out);
        assert_eq!(
            out.events,
            vec![
                Event::TaskAssigned {
                    attempt: attempt(&urgent, 1).into(),
                    pod: pod("p1"),
                    at: at(1)
                },
                Event::TaskAssigned {
                    attempt: attempt(&old, 1).into(),
                    pod: pod("p1"),
                    at: at(1)
                },
            ]
        );
    }

    #[test]
    fn spreads_across_pods() {
        let mut e = engine();
        let mut out = Output::default();
        e.submit(vec![spec("g"), spec("g")], T0, &mut out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 4), T0, &mut out)
            .unwrap();
        e.pod_hello(2, hello("p2", &["g"], 4), T0, &mut out)
            .unwrap();
        out.events.clear();
        e.dispatch(T0, &mut out);
        let pods: Vec<_> = out
            .events
            .iter()
            .map(|ev| match ev {
                Event::TaskAssigned { pod, .. } => pod.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(pods.len(), 2);
        assert_ne!(pods[0], pods[1]);
    }

    #[test]
    fn prefetch_adds_capacity_beyond_slots() {
        let mut e = engine();
        let mut out = Output::default();
        e.submit((0..5).map(|_| spec("g")).collect(), T0, &mut out)
            .unwrap();
        let mut h = hello("p1", &["g"], 1);
        h.prefetch = 2;
        e.pod_hello(1, h, T0, &mut out).unwrap();
        out.events.clear();
        e.dispatch(T0, &mut out);
        assert_eq!(out.events.len(), 3);
    }
}

mod results {
    use super::*;

    #[test]
    fn current_attempt_result_is_recorded_once() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        let finished = PodMessage::Finished {
            attempt: attempt(&a, 1),
            outcome: Ok(Bytes::from_static(b"ok")),
        };
        e.pod_message(1, finished.clone(), at(3), &mut out);
        assert_eq!(
            out.events,
            vec![Event::TaskFinished {
                attempt: attempt(&a, 1).into(),
                outcome: Outcome::Succeeded(Bytes::from_static(b"ok")).into(),
                at: at(3)
            }]
        );
        let mut again = Output::default();
        e.pod_message(1, finished, at(4), &mut again);
        assert!(again.events.is_empty(), "a repeated result records nothing");
    }

    #[test]
    fn result_of_an_old_attempt_is_dropped() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_message(
            1,
            PodMessage::Returned {
                attempts: vec![attempt(&a, 1)],
            },
            at(1),
            &mut out,
        );
        e.pod_hello(2, hello("p2", &["g"], 1), at(2), &mut out)
            .unwrap();
        e.dispatch(at(2), &mut out);
        assert_eq!(e.state().task(&a.id).unwrap().attempt, Attempt(2));
        out.events.clear();
        let late = PodMessage::Finished {
            attempt: attempt(&a, 1),
            outcome: Err(TaskError::new(ErrorKind::Handler, "late")),
        };
        e.pod_message(1, late, at(3), &mut out);
        assert!(out.events.is_empty());
        assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Running);
    }

    /// A pod's huge error message is kept cut to `MAX_ERROR_MESSAGE_BYTES`, on a character
    /// boundary, saying how long it was.
    #[test]
    fn a_huge_error_message_is_cut() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        // Two-byte characters after one byte: the limit falls inside a character.
        let message = format!("a{}", "é".repeat(mawex_api::MAX_ERROR_MESSAGE_BYTES));
        let failed = PodMessage::Finished {
            attempt: attempt(&a, 1),
            outcome: Err(TaskError::new(ErrorKind::Handler, message)),
        };
        e.pod_message(1, failed, at(1), &mut out);
        let kept = &e.state().task(&a.id).unwrap().failures()[0].error.message;
        assert!(
            kept.len() < mawex_api::MAX_ERROR_MESSAGE_BYTES + 100,
            "{}",
            kept.len()
        );
        assert!(kept.starts_with("aéé"));
        assert!(
            kept.ends_with(&format!(
                "(a message of {} bytes, cut to {})",
                2 * mawex_api::MAX_ERROR_MESSAGE_BYTES + 1,
                mawex_api::MAX_ERROR_MESSAGE_BYTES - 1
            )),
            "{}",
            kept.chars().rev().take(60).collect::<String>()
        );
    }

    /// A task failed and retried by hand over and over keeps the last `MAX_ATTEMPTS`
    /// failures, not all of them, and its retry budget still counts right.
    #[test]
    fn the_failure_history_is_capped_and_the_budget_still_holds() {
        let policy = RetryPolicy::new(2)
            .with_base_delay(Duration::ZERO)
            .with_max_delay(Duration::ZERO);
        let a = spec("g").with_retry(policy);
        let mut e = running(&a);
        let mut out = Output::default();
        let mut now = at(1);
        let fail = |e: &mut Engine, now: Timestamp, out: &mut Output| {
            let n = e.state().task(&a.id).unwrap().attempt.0;
            let failed = PodMessage::Finished {
                attempt: attempt(&a, n),
                outcome: Err(TaskError::new(ErrorKind::Handler, "again")),
            };
            e.pod_message(1, failed, now, out);
            e.tick(now, out);
            e.dispatch(now, out);
        };
        for _ in 0..600 {
            // Two attempts per round (one retry), then failed for good, then retried by hand.
            fail(&mut e, now, &mut out);
            assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Running);
            fail(&mut e, now, &mut out);
            assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Failed);
            e.retry_failed(&mawex_api::FailedFilter::ids(vec![a.id]), now, &mut out);
            e.dispatch(now, &mut out);
            now = now.saturating_add(Duration::from_millis(1));
        }
        let entry = e.state().task(&a.id).unwrap();
        assert_eq!(entry.failures().len(), mawex_api::MAX_ATTEMPTS as usize);
        assert_eq!(entry.state, TaskState::Running);
    }

    /// Counters and times at their limits (only a damaged snapshot or journal holds such
    /// values) saturate instead of panicking the core thread.
    #[test]
    fn counters_and_times_at_their_limits_do_not_panic() {
        let state = MasterState::from_parts(
            Default::default(),
            Default::default(),
            Default::default(),
            u64::MAX,
            u64::MAX,
            Default::default(),
        );
        let mut e = Engine::new(state, engine().config.clone(), T0);
        let mut out = Output::default();
        let a = spec("g");
        let queued: Vec<TaskSpec> = (0..6_000).map(|_| spec("g")).collect();
        e.submit(vec![a.clone()], T0, &mut out).unwrap();
        e.submit(queued.clone(), T0, &mut out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
            .unwrap();
        e.dispatch(T0, &mut out);
        // A run that took almost 2^64 ms: the group's mean duration at its limit.
        let end = Timestamp(u64::MAX - 1);
        e.pod_message(1, finished(&a, 1), end, &mut out);
        assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Succeeded);
        // Thousands ahead, one slot: an estimate too large for a Duration.
        let last = queued.last().unwrap();
        assert_eq!(e.state().eta(&last.id, 1), None);
    }

    /// A pod's retry hint cannot park a task past the policy's `max_delay` (a hint of
    /// `Duration::MAX` once saturated to the end of time, and the task never ran again).
    #[test]
    fn a_retry_hint_is_capped_by_the_policy() {
        let policy = RetryPolicy::new(3).with_max_delay(Duration::from_secs(300));
        let a = spec("g").with_retry(policy);
        let mut e = running(&a);
        let mut out = Output::default();
        let error = TaskError::new(ErrorKind::Handler, "later")
            .with_retry(mawex_api::RetryHint::After(Duration::MAX));
        let failed = PodMessage::Finished {
            attempt: attempt(&a, 1),
            outcome: Err(error),
        };
        e.pod_message(1, failed, at(5), &mut out);
        let retry_at = out.events.iter().find_map(|event| match event {
            Event::TaskRetryScheduled { retry_at, .. } => Some(*retry_at),
            _ => None,
        });
        assert_eq!(
            retry_at,
            Some(at(5).saturating_add(Duration::from_secs(300)))
        );
    }

    #[test]
    fn messages_of_unknown_sessions_are_ignored() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        let forged = finished(&a, 1);
        e.pod_message(99, forged, at(1), &mut out);
        assert!(out.events.is_empty());
    }
}

mod leases {
    use super::*;

    #[test]
    fn silent_pod_loses_its_leases_at_the_deadline() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.tick(
            T0.saturating_add(LEASE - Duration::from_millis(1)),
            &mut out,
        );
        assert!(out.events.is_empty(), "not expired before the deadline");
        let deadline = T0.saturating_add(LEASE);
        e.tick(deadline, &mut out);
        assert_eq!(
            out.events,
            vec![lease_lost(
                &a,
                deadline,
                "the pod went silent; its lease expired"
            )]
        );
        assert_eq!(out.closed_sessions, vec![1]);
    }

    #[test]
    fn heartbeat_renews_and_flags_attempts_the_pod_should_not_hold() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        let stranger = AttemptRef {
            task: spec("g").id,
            attempt: Attempt(1),
        };
        e.pod_message(
            1,
            PodMessage::Heartbeat {
                holding: vec![attempt(&a, 1), stranger],
                received: 1,
                usage: None,
            },
            at(9_000),
            &mut out,
        );
        assert_eq!(out.messages, vec![(1, MasterMessage::Cancel(stranger))]);
        e.tick(T0.saturating_add(LEASE), &mut out);
        assert!(out.events.is_empty(), "the heartbeat renewed the lease");
    }

    #[test]
    fn disconnected_pod_can_reclaim_within_the_lease_timeout() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_disconnected(1, at(1));
        let mut h = hello("p1", &["g"], 1);
        h.holding = vec![attempt(&a, 1)];
        e.pod_hello(2, h, at(2), &mut out).unwrap();
        e.tick(at(1).saturating_add(LEASE), &mut out);
        assert!(out.events.is_empty(), "re-adopted, not expired");
        assert!(out.messages.is_empty());
        let mut done = Output::default();
        e.pod_message(2, finished(&a, 1), at(3), &mut done);
        assert_eq!(done.events.len(), 1);
    }

    #[test]
    fn orphans_after_restart_expire_unless_claimed() {
        let a = spec("g");
        let e = running(&a);
        // A new engine over the same state, as after a restart.
        let mut restarted = Engine::new(e.state().clone(), e.config.clone(), at(100));
        let mut out = Output::default();
        restarted.tick(at(100).saturating_add(LEASE), &mut out);
        assert_eq!(
            out.events,
            vec![lease_lost(
                &a,
                at(100).saturating_add(LEASE),
                "the pod went silent; its lease expired"
            )]
        );
    }

    #[test]
    fn the_recovery_grace_delays_the_expiry_of_orphans() {
        let a = spec("g");
        let e = running(&a);
        let grace = Duration::from_secs(2);
        let mut config = e.config.clone();
        config.recovery_grace = grace;
        let mut restarted = Engine::new(e.state().clone(), config, at(100));
        let mut out = Output::default();
        restarted.tick(at(100).saturating_add(LEASE), &mut out);
        assert!(out.events.is_empty(), "{:?}", out.events);
        let expiry = at(100).saturating_add(LEASE).saturating_add(grace);
        restarted.tick(expiry, &mut out);
        assert_eq!(
            out.events,
            vec![lease_lost(
                &a,
                expiry,
                "the pod went silent; its lease expired"
            )]
        );
    }

    #[test]
    fn re_registering_without_an_attempt_requeues_it_at_once() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_hello(2, hello("p1", &["g"], 1), at(1), &mut out)
            .unwrap();
        assert_eq!(
            out.events[0],
            Event::TaskRequeued {
                attempt: attempt(&a, 1).into(),
                reason: RequeueReason::PodLeft,
                at: at(1)
            }
        );
        assert_eq!(out.closed_sessions, vec![1]);
    }

    #[test]
    fn leave_requeues_what_the_pod_still_holds() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_message(1, PodMessage::Leave, at(1), &mut out);
        assert_eq!(
            out.events,
            vec![Event::TaskRequeued {
                attempt: attempt(&a, 1).into(),
                reason: RequeueReason::PodLeft,
                at: at(1)
            }]
        );
        assert!(e.pod_stats().is_empty());
    }

    #[test]
    fn bad_hellos_are_refused() {
        let mut e = engine();
        let mut out = Output::default();
        assert!(matches!(
            e.pod_hello(1, hello("p", &["g"], 0), T0, &mut out),
            Err(ApiError::InvalidArgument(m)) if m.contains("slots")
        ));
        assert!(e.pod_hello(1, hello("p", &[], 1), T0, &mut out).is_err());
        assert!(e.pod_stats().is_empty());
    }
}

mod cancel {
    use super::*;

    #[test]
    fn pending_task_is_cancelled_and_never_leased() {
        let mut e = engine();
        let mut out = Output::default();
        let a = spec("g");
        e.submit(vec![a.clone()], T0, &mut out).unwrap();
        out.events.clear();
        assert_eq!(
            e.cancel(a.id, at(1), &mut out).unwrap(),
            CancelAck::Cancelled
        );
        assert_eq!(
            out.events,
            vec![Event::TaskCancelled {
                task: a.id,
                at: at(1)
            }]
        );
        e.pod_hello(1, hello("p1", &["g"], 1), at(2), &mut out)
            .unwrap();
        out.events.clear();
        e.dispatch(at(2), &mut out);
        assert!(out.events.is_empty());
    }

    #[test]
    fn running_task_is_cancelled_and_its_pod_told() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.cancel(a.id, at(1), &mut out).unwrap();
        assert_eq!(
            out.messages,
            vec![(1, MasterMessage::Cancel(attempt(&a, 1)))]
        );
        assert_eq!(
            e.cancel(a.id, at(2), &mut out).unwrap(),
            CancelAck::Cancelled,
            "cancelling again answers the same"
        );
        // The racing result of the cancelled attempt changes nothing.
        let mut late = Output::default();
        e.pod_message(1, finished(&a, 1), at(3), &mut late);
        assert!(late.events.is_empty());
        assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Cancelled);
    }
}

mod retention {
    use super::*;

    #[test]
    fn finished_tasks_are_forgotten_after_retention() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_message(1, finished(&a, 1), at(0), &mut out);
        out.events.clear();
        // Keep the pod alive so only retention acts.
        e.pod_message(
            1,
            PodMessage::Heartbeat {
                holding: vec![],
                received: 0,
                usage: None,
            },
            at(3_600_000),
            &mut out,
        );
        e.tick(at(3_600_000), &mut out);
        assert!(out.events.is_empty(), "kept for exactly the retention");
        e.pod_message(
            1,
            PodMessage::Heartbeat {
                holding: vec![],
                received: 0,
                usage: None,
            },
            at(3_600_001),
            &mut out,
        );
        e.tick(at(3_600_001), &mut out);
        assert_eq!(
            out.events,
            vec![Event::TasksForgotten { tasks: vec![a.id] }]
        );
        assert!(e.state().task(&a.id).is_none());
    }
}

/// Replaying the journal of a run rebuilds exactly the state the run ended with.
#[test]
fn replay_rebuilds_the_same_state() {
    let mut e = engine();
    let mut out = Output::default();
    let specs: Vec<_> = (0..20)
        .map(|i| spec(if i % 2 == 0 { "g" } else { "h" }))
        .collect();
    e.submit(specs.clone(), T0, &mut out).unwrap();
    e.pod_hello(1, hello("p1", &["g", "h"], 3), T0, &mut out)
        .unwrap();
    for round in 0..10u64 {
        e.dispatch(at(round), &mut out);
        let leased: Vec<_> = e.state().running().map(|entry| entry.current()).collect();
        for (i, r) in leased.into_iter().enumerate() {
            let message = if i % 3 == 0 {
                PodMessage::Returned {
                    attempts: vec![r.into()],
                }
            } else {
                PodMessage::Finished {
                    attempt: r.into(),
                    outcome: Ok(Bytes::new()),
                }
            };
            e.pod_message(1, message, at(round), &mut out);
        }
    }
    e.cancel(specs[19].id, at(20), &mut out).unwrap();
    let replayed = replayed(&out.events);
    assert_eq!(&replayed, e.state());
    assert_eq!(replayed.counts(), e.state().counts());
}

mod reconciliation {
    use super::*;

    fn heartbeat(holding: Vec<AttemptRef>, received: u64) -> PodMessage {
        PodMessage::Heartbeat {
            holding,
            received,
            usage: None,
        }
    }

    #[test]
    fn a_lease_the_pod_received_but_no_longer_holds_runs_again() {
        let a = spec("g");
        let mut e = running(&a);
        let batch = e.batch();
        let mut out = Output::default();
        // Not yet received: the Assign may still be on its way.
        e.pod_message(1, heartbeat(vec![], batch - 1), at(1), &mut out);
        assert!(out.events.is_empty());
        e.pod_message(1, heartbeat(vec![], batch), at(2), &mut out);
        assert_eq!(
            out.events,
            vec![lease_lost(&a, at(2), "the pod no longer holds the attempt")]
        );
    }

    #[test]
    fn a_held_lease_is_kept() {
        let a = spec("g");
        let mut e = running(&a);
        let batch = e.batch();
        let mut out = Output::default();
        e.pod_message(1, heartbeat(vec![attempt(&a, 1)], batch), at(1), &mut out);
        assert!(out.events.is_empty() && out.messages.is_empty());
    }

    #[test]
    fn a_draining_pod_gets_no_new_leases() {
        let mut e = engine();
        let mut out = Output::default();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
            .unwrap();
        e.pod_message(1, PodMessage::Drain, at(1), &mut out);
        e.submit(vec![spec("g")], at(2), &mut out).unwrap();
        out.events.clear();
        e.dispatch(at(2), &mut out);
        assert!(out.events.is_empty());
    }

    #[test]
    fn an_operator_drain_tells_the_pod_and_a_drained_pod_stays_drained_on_reconnect() {
        let mut e = engine();
        let mut out = Output::default();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
            .unwrap();
        out.messages.clear();
        assert!(e.drain_pod(&pod("p1"), &mut out));
        assert_eq!(out.messages, vec![(1, MasterMessage::Drain)]);
        assert!(!e.drain_pod(&pod("nobody"), &mut out));
        // Its next hello (another session, or another master) says it drains: no work.
        let mut drained = hello("p1", &["g"], 1);
        drained.draining = true;
        e.pod_hello(2, drained, at(1), &mut out).unwrap();
        e.submit(vec![spec("g")], at(2), &mut out).unwrap();
        out.events.clear();
        e.dispatch(at(2), &mut out);
        assert!(out.events.is_empty(), "{:?}", out.events);
        assert!(e.pod_stats().iter().all(|p| p.draining));
    }

    #[test]
    fn returned_work_is_not_leased_back_to_the_pod_that_returned_it() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_message(
            1,
            PodMessage::Returned {
                attempts: vec![attempt(&a, 1)],
            },
            at(1),
            &mut out,
        );
        e.dispatch(at(1), &mut out);
        assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Pending);
        e.pod_hello(2, hello("p2", &["g"], 1), at(2), &mut out)
            .unwrap();
        out.events.clear();
        e.dispatch(at(2), &mut out);
        assert_eq!(
            out.events,
            vec![Event::TaskAssigned {
                attempt: attempt(&a, 2).into(),
                pod: pod("p2"),
                at: at(2)
            }]
        );
    }

    #[test]
    fn a_result_from_a_pod_that_does_not_hold_the_lease_is_dropped() {
        let a = spec("g");
        let mut e = running(&a);
        let mut out = Output::default();
        e.pod_hello(2, hello("p2", &["g"], 1), at(1), &mut out)
            .unwrap();
        out.events.clear();
        e.pod_message(2, finished(&a, 1), at(2), &mut out);
        assert!(out.events.is_empty());
        assert_eq!(e.state().task(&a.id).unwrap().state, TaskState::Running);
    }
}

/// Seeded random runs of the engine against the invariants a simple model states: every
/// running task has exactly one lease holder, terminal states never change, each task gets at
/// most one result, the counts match, and replaying the events rebuilds the state.
mod model {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// xorshift64*: enough randomness for exploring schedules, reproducible by seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const GROUPS: [&str; 3] = ["a", "b", "c"];
    const PODS: [&str; 3] = ["p0", "p1", "p2"];

    fn check(e: &Engine, terminal: &HashMap<mawex_api::TaskId, TaskState>) {
        let state = e.state();
        let mut counts = crate::state::TaskCounts::default();
        let mut holders: HashMap<mawex_api::TaskId, usize> = HashMap::new();
        for (pod_id, entry) in &e.pods {
            for (task, lease) in &entry.leases {
                let t = state.task(task).expect("a lease on a known task");
                assert_eq!(t.state, TaskState::Running, "lease on a non-running task");
                assert_eq!(t.attempt, lease.attempt, "lease of another attempt");
                assert_eq!(t.pod(), Some(pod_id), "lease held by another pod");
                *holders.entry(*task).or_default() += 1;
            }
            assert_eq!(e.sessions.get(&entry.session), Some(pod_id));
        }
        for (task, (attempt, _)) in &e.orphans {
            let t = state.task(task).expect("an orphan of a known task");
            assert_eq!((t.state, t.attempt), (TaskState::Running, *attempt));
            *holders.entry(*task).or_default() += 1;
        }
        for entry in state.running() {
            assert_eq!(
                holders.get(&entry.spec.id),
                Some(&1),
                "one holder per running task"
            );
        }
        for id in terminal.keys() {
            if let Some(t) = state.task(id) {
                assert_eq!(Some(&t.state), terminal.get(id), "a terminal state changed");
            }
        }
        for (_, entry) in state.tasks_for_test() {
            match entry.state {
                TaskState::Pending => counts.pending += 1,
                TaskState::Running => counts.running += 1,
                TaskState::Succeeded => counts.succeeded += 1,
                TaskState::Failed => counts.failed += 1,
                TaskState::Blocked => counts.blocked += 1,
                _ => counts.cancelled += 1,
            }
        }
        assert_eq!(counts, state.counts());
    }

    fn run(seed: u64) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut e = engine();
        let mut now = T0;
        let mut all_events = Vec::new();
        let mut ids = Vec::new();
        let mut next_session = 0u64;
        let mut terminal: HashMap<mawex_api::TaskId, TaskState> = HashMap::new();
        let mut results: HashSet<mawex_api::TaskId> = HashSet::new();
        for _ in 0..400 {
            let mut out = Output::default();
            match rng.below(10) {
                0..=1 => {
                    let n = 1 + rng.below(3);
                    let specs: Vec<_> = (0..n)
                        .map(|_| {
                            let g = GROUPS[rng.below(3) as usize];
                            spec(g).with_priority(rng.below(3) as i32)
                        })
                        .collect();
                    ids.extend(specs.iter().map(|s| s.id));
                    e.submit(specs, now, &mut out).unwrap();
                }
                2 => {
                    next_session += 1;
                    let name = PODS[rng.below(3) as usize];
                    let groups: Vec<&str> = GROUPS
                        .iter()
                        .copied()
                        .filter(|_| rng.below(2) == 0)
                        .collect();
                    let mut h = hello(
                        name,
                        if groups.is_empty() { &["a"] } else { &groups },
                        1 + rng.below(2) as u32,
                    );
                    h.prefetch = rng.below(2) as u32;
                    // Sometimes it lets the master size its queue.
                    if rng.below(2) == 0 {
                        h.adaptive_prefetch = 1 + rng.below(64) as u32;
                    }
                    // Sometimes the pod still holds what it had.
                    if let Some(p) = e.pods.get(&pod(name)) {
                        if rng.below(2) == 0 {
                            h.holding = p
                                .leases
                                .iter()
                                .map(|(t, l)| AttemptRef {
                                    task: *t,
                                    attempt: l.attempt,
                                })
                                .collect();
                        }
                    }
                    // And sometimes claims what is not its own.
                    if rng.below(3) == 0 {
                        if let Some(&id) = ids.get(rng.below(ids.len().max(1) as u64) as usize) {
                            let attempt = Attempt(1 + rng.below(3) as u32);
                            h.holding.push(AttemptRef { task: id, attempt });
                        }
                    }
                    e.pod_hello(next_session, h, now, &mut out).unwrap();
                }
                3..=5 => {
                    // A pod reports on one of its leases, or a stale one.
                    let sessions: Vec<u64> = e.sessions.keys().copied().collect();
                    if let Some(&s) = sessions.get(rng.below(sessions.len().max(1) as u64) as usize)
                    {
                        let pod_id = e.sessions[&s].clone();
                        let leases: Vec<AttemptRef> = e.pods[&pod_id]
                            .leases
                            .iter()
                            .map(|(t, l)| AttemptRef {
                                task: *t,
                                attempt: l.attempt,
                            })
                            .collect();
                        if let Some(&r) = leases.get(rng.below(leases.len().max(1) as u64) as usize)
                        {
                            let r = if rng.below(5) == 0 {
                                AttemptRef {
                                    task: r.task,
                                    attempt: Attempt(r.attempt.0 + 1),
                                }
                            } else {
                                r
                            };
                            let message = match rng.below(4) {
                                0 => PodMessage::Returned { attempts: vec![r] },
                                1 => PodMessage::Finished {
                                    attempt: r,
                                    outcome: Err(TaskError::new(ErrorKind::Handler, "x")),
                                },
                                _ => PodMessage::Finished {
                                    attempt: r,
                                    outcome: Ok(Bytes::new()),
                                },
                            };
                            e.pod_message(s, message, now, &mut out);
                        }
                    }
                }
                6 => {
                    let sessions: Vec<u64> = e.sessions.keys().copied().collect();
                    if let Some(&s) = sessions.get(rng.below(sessions.len().max(1) as u64) as usize)
                    {
                        match rng.below(3) {
                            0 => e.pod_message(s, PodMessage::Leave, now, &mut out),
                            1 => e.pod_disconnected(s, now),
                            _ => {
                                let pod_id = e.sessions[&s].clone();
                                let holding = e.pods[&pod_id]
                                    .leases
                                    .iter()
                                    .filter(|_| rng.below(4) != 0)
                                    .map(|(t, l)| AttemptRef {
                                        task: *t,
                                        attempt: l.attempt,
                                    })
                                    .collect();
                                let received = e.batch();
                                e.pod_message(
                                    s,
                                    PodMessage::Heartbeat {
                                        holding,
                                        received,
                                        usage: None,
                                    },
                                    now,
                                    &mut out,
                                );
                            }
                        }
                    }
                }
                7 => {
                    if let Some(&id) = ids.get(rng.below(ids.len().max(1) as u64) as usize) {
                        let _ = e.cancel(id, now, &mut out);
                    }
                }
                _ => {
                    now = now.saturating_add(Duration::from_millis(rng.below(6_000)));
                    e.tick(now, &mut out);
                }
            }
            e.dispatch(now, &mut out);
            for event in &out.events {
                if let Event::TaskFinished { attempt, .. } = event {
                    assert!(results.insert(attempt.task), "a second result for one task");
                }
            }
            all_events.extend(out.events);
            for id in &ids {
                if let Some(t) = e.state().task(id) {
                    if t.state.is_terminal() {
                        terminal.entry(*id).or_insert(t.state);
                    }
                }
            }
            check(&e, &terminal);
        }
        assert_eq!(
            &replayed(&all_events),
            e.state(),
            "seed {seed}: replay differs"
        );
        // Every derived index (the counts, the list index, the queues, ...) as a rebuild
        // from the tasks would make it: a drift stays once it happened.
        let mut rebuilt = e.state().clone();
        rebuilt.rebuild_indexes();
        assert_eq!(e.state(), &rebuilt, "seed {seed}: a derived index drifted");
    }

    #[test]
    fn random_schedules_keep_the_invariants() {
        for seed in 0..100 {
            run(seed);
        }
    }
}

mod fairness {
    use super::*;

    /// Runs the engine with one single-slot pod until the queue is empty; returns the tasks in
    /// the order they started.
    fn drain(e: &mut Engine) -> Vec<mawex_api::TaskId> {
        let mut started = Vec::new();
        let mut out = Output::default();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
            .unwrap();
        loop {
            let mut out = Output::default();
            e.dispatch(T0, &mut out);
            let Some(Event::TaskAssigned { attempt, .. }) = out.events.first().cloned() else {
                return started;
            };
            started.push(attempt.task);
            let done = PodMessage::Finished {
                attempt: attempt.into(),
                outcome: Ok(Bytes::new()),
            };
            e.pod_message(1, done, T0, &mut out);
        }
    }

    #[test]
    fn a_late_tenant_is_not_starved_by_an_early_burst() {
        let mut e = engine();
        let mut out = Output::default();
        let a: Vec<_> = (0..1000)
            .map(|_| spec("g").with_fairness_key("tenant-a"))
            .collect();
        let b: Vec<_> = (0..10)
            .map(|_| spec("g").with_fairness_key("tenant-b"))
            .collect();
        e.submit(a.clone(), T0, &mut out).unwrap();
        e.submit(b.clone(), T0, &mut out).unwrap();
        let order = drain(&mut e);
        assert_eq!(order.len(), 1010);
        let position = |id| order.iter().position(|t| *t == id).unwrap();
        let hundredth_a = position(a[99].id);
        for task in &b {
            assert!(
                position(task.id) < hundredth_a,
                "every B task starts before A's 100th"
            );
        }
        // Within a tenant, first in, first out.
        let a_positions: Vec<_> = a.iter().map(|t| position(t.id)).collect();
        assert!(a_positions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn priority_comes_before_fairness() {
        let mut e = engine();
        let mut out = Output::default();
        let mut specs: Vec<_> = (0..50)
            .map(|i| spec("g").with_fairness_key(format!("t{}", i % 5)))
            .collect();
        let urgent = spec("g").with_fairness_key("t0").with_priority(10);
        specs.push(urgent.clone());
        e.submit(specs, T0, &mut out).unwrap();
        assert_eq!(drain(&mut e)[0], urgent.id, "submitted last, started first");
    }
}

mod rate_limit {
    use mawex_api::{GroupSettings, RateLimit};

    use super::*;

    #[test]
    fn a_token_bucket_caps_starts_over_time() {
        let mut e = engine();
        let mut out = Output::default();
        let settings = GroupSettings::default().with_rate(Some(RateLimit::new(50, 10)));
        e.configure_group(group("g"), settings, &mut out).unwrap();
        e.submit((0..500).map(|_| spec("g")).collect(), T0, &mut out)
            .unwrap();
        e.pod_hello(1, hello("p1", &["g"], 1000), T0, &mut out)
            .unwrap();
        let mut starts = 0usize;
        // Three simulated seconds in 10 ms steps; every started task finishes at once.
        for step in 0..=300u64 {
            let now = at(step * 10);
            let mut out = Output::default();
            e.pod_message(
                1,
                PodMessage::Heartbeat {
                    holding: vec![],
                    received: 0,
                    usage: None,
                },
                now,
                &mut out,
            );
            e.tick(now, &mut out);
            e.dispatch(now, &mut out);
            let started: Vec<AttemptRef> = out
                .events
                .iter()
                .filter_map(|ev| match ev {
                    Event::TaskAssigned { attempt, .. } => Some(AttemptRef::from(*attempt)),
                    _ => None,
                })
                .collect();
            starts += started.len();
            for attempt in started {
                let done = PodMessage::Finished {
                    attempt,
                    outcome: Ok(Bytes::new()),
                };
                e.pod_message(1, done, now, &mut out);
            }
            if step == 0 {
                assert_eq!(starts, 10, "a full bucket allows the burst at once");
            }
        }
        assert!(starts <= 10 + 50 * 3, "{starts} starts in 3 s");
        assert!(starts >= 50 * 3, "{starts}: the rate is used, not wasted");
    }

    #[test]
    fn a_rate_limited_group_asks_to_be_woken_for_its_next_token() {
        let mut e = engine();
        let mut out = Output::default();
        let settings = GroupSettings::default().with_rate(Some(RateLimit::new(4, 1)));
        e.configure_group(group("g"), settings, &mut out).unwrap();
        e.submit(vec![spec("g"), spec("g")], T0, &mut out).unwrap();
        e.pod_hello(1, hello("p1", &["g"], 2), T0, &mut out)
            .unwrap();
        out.events.clear();
        e.dispatch(T0, &mut out);
        assert_eq!(out.events.len(), 1, "one token, one start");
        // 4 per second: the next token is 250 ms away; the lease deadline is later.
        assert_eq!(e.next_deadline(), Some(at(250)));
    }
}

mod broadcast {
    use std::collections::BTreeMap;

    use mawex_api::{BroadcastSpec, Source, Strategy, TargetState};

    use super::*;

    /// A stored version at the end of every integer type still has a next one, and one whose
    /// next would be too long is refused with a clear error, not a panic of the core thread.
    #[test]
    fn versions_at_the_extremes_count_up_or_are_refused() {
        let mut e = engine();
        let mut out = Output::default();
        let spec = BroadcastSpec::new("app", group("g"), "pull");
        let max = u128::MAX.to_string();
        e.fire_broadcast(spec.clone().with_version(max), T0, &mut out)
            .unwrap();
        let plan = e.plan_broadcast(&spec).unwrap();
        assert_eq!(plan.version, "340282366920938463463374607431768211456");
        let fired = e.fire_broadcast(spec.clone(), at(1), &mut out).unwrap();
        assert_eq!(fired.version, plan.version);

        let other = BroadcastSpec::new("long", group("g"), "pull");
        e.fire_broadcast(other.clone().with_version("9".repeat(128)), at(2), &mut out)
            .unwrap();
        match e.plan_broadcast(&other) {
            Err(ApiError::InvalidArgument(m)) => {
                assert!(m.contains("give the broadcast a version"), "{m}")
            }
            r => panic!("expected a refusal, got {r:?}"),
        }
    }

    /// Fires a pull broadcast to `n` one-slot pods, then finishes every running pull at
    /// once, round after round, checking the invariants each round. Returns the rounds.
    fn waves(n: usize, c: u32) -> u32 {
        let mut e = engine();
        let mut out = Output::default();
        for i in 0..n {
            e.pod_hello(
                i as u64 + 1,
                hello(&format!("p{i:03}"), &["g"], 1),
                T0,
                &mut out,
            )
            .unwrap();
        }
        let spec = BroadcastSpec::new("app", group("g"), "pull")
            .with_strategy(Strategy::Pull { per_source: c });
        let view = e.fire_broadcast(spec, T0, &mut out).unwrap();
        let mut rounds = 0;
        let mut now = T0;
        loop {
            e.dispatch(now, &mut out);
            let view = e.broadcast_view(view.id).unwrap();
            let running: Vec<_> = view
                .targets
                .iter()
                .filter(|t| t.state == TargetState::Running)
                .collect();
            if running.is_empty() {
                assert!(view.is_finished(), "stuck: {view:?}");
                break;
            }
            rounds += 1;
            let mut per_source: BTreeMap<&Source, u32> = BTreeMap::new();
            for t in &running {
                let source = t.source.as_ref().unwrap();
                *per_source.entry(source).or_default() += 1;
                if let Source::Pod(p) = source {
                    let s = view.targets.iter().find(|o| &o.pod == p).unwrap();
                    assert_eq!(s.state, TargetState::Done, "a source finished first");
                }
            }
            assert!(per_source.values().all(|n| *n <= c), "{per_source:?}");
            now = at(u64::from(rounds) * 100);
            for t in running {
                let task = t.task.unwrap();
                let session = e.session_of(&t.pod).unwrap();
                let attempt = AttemptRef {
                    task,
                    attempt: Attempt(1),
                };
                let done = PodMessage::Finished {
                    attempt,
                    outcome: Ok(Bytes::new()),
                };
                e.pod_message(session, done, now, &mut out);
            }
        }
        rounds
    }

    #[test]
    fn pull_takes_log_waves_and_respects_the_per_source_limit() {
        // 1 → 3 → 9 → 27 ≥ 21 nodes: three rounds for 20 pods with 2 pulls per source.
        assert_eq!(waves(20, 2), 3);
        // 1 → 6 → 36 → 216 ≥ 101: three rounds for 100 pods with 5.
        assert_eq!(waves(100, 5), 3);
        // One pull per source: doubling, ⌈log₂ 65⌉ = 7 rounds for 64 pods.
        assert_eq!(waves(64, 1), 7);
    }

    /// Fires a pull broadcast of `app` at `version` and finishes its targets at `now`.
    fn fired_and_finished(
        e: &mut Engine,
        app: &str,
        version: &str,
        now: Timestamp,
        out: &mut Output,
    ) -> mawex_api::BroadcastId {
        let spec = BroadcastSpec::new(app, group("g"), "pull").with_version(version);
        let id = e.fire_broadcast(spec, now, out).unwrap().id;
        e.dispatch(now, out);
        for target in e.broadcast_view(id).unwrap().targets {
            let task = target.task.expect("a target that runs");
            let session = e.session_of(&target.pod).unwrap();
            let done = PodMessage::Finished {
                attempt: AttemptRef {
                    task,
                    attempt: Attempt(1),
                },
                outcome: Ok(Bytes::new()),
            };
            e.pod_message(session, done, now, out);
        }
        assert!(e.broadcast_view(id).unwrap().is_finished());
        id
    }

    #[test]
    fn finished_broadcasts_are_forgotten_after_retention_but_each_apps_latest_stays() {
        let mut e = engine();
        let mut out = Output::default();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
            .unwrap();
        let old = fired_and_finished(&mut e, "site", "v1", T0, &mut out);
        let latest = fired_and_finished(&mut e, "site", "v2", at(10), &mut out);
        let other = fired_and_finished(&mut e, "docs", "v1", at(20), &mut out);
        e.tick(at(1_000), &mut out);
        assert!(e.broadcast_view(old).is_some(), "kept within the retention");
        // Past the retention: the target tasks go first, then the broadcast.
        let later = at(3_600_000 + 1_000);
        e.tick(later, &mut out);
        e.tick(later, &mut out);
        assert!(e.broadcast_view(old).is_none(), "forgotten");
        assert!(e.broadcast_view(latest).is_some(), "its app's latest stays");
        assert!(e.broadcast_view(other).is_some(), "its app's latest stays");
        assert!(e.state().broadcasts().has_version("site", &pod("p1"), "v2"));
        let forgotten: Vec<_> = out
            .events
            .iter()
            .filter_map(|event| match event {
                Event::BroadcastsForgotten { ids } => Some(ids.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(forgotten, [vec![old]], "one event, once");
        assert_eq!(&replayed(&out.events), e.state());
    }

    /// A loop of hellos with new pod names (a hostile client, or churn with random names)
    /// adds a catch-up target to the app's latest broadcast each time; once those targets
    /// ended and their tasks were forgotten, they go too, and the broadcast is back to the
    /// pods it was fired to.
    #[test]
    fn catch_up_targets_of_pods_that_came_once_are_forgotten() {
        let mut e = engine();
        let mut out = Output::default();
        e.pod_hello(1, hello("p1", &["g"], 1), T0, &mut out)
            .unwrap();
        let id = fired_and_finished(&mut e, "site", "v1", T0, &mut out);
        for i in 0..20u64 {
            e.pod_hello(
                10 + i,
                hello(&format!("stranger-{i}"), &["g"], 1),
                at(10),
                &mut out,
            )
            .unwrap();
            e.pod_disconnected(10 + i, at(10));
        }
        assert_eq!(e.broadcast_view(id).unwrap().targets.len(), 21);
        // Away for a lease: their targets fail. Past the retention: their tasks are forgotten.
        let mut now = at(10);
        for step in [LEASE * 2, Duration::from_secs(3600 + 10)] {
            now = now.saturating_add(step);
            e.tick(now, &mut out);
        }
        let view = e.broadcast_view(id).unwrap();
        let pods: Vec<_> = view.targets.iter().map(|t| t.pod.to_string()).collect();
        assert_eq!(pods, ["p1"], "only the pod it was fired to");
        assert_eq!(&replayed(&out.events), e.state());
    }

    /// What a pod applied is remembered while it is connected and for the result retention
    /// after it left (it is not caught up again when it comes back within that time), then
    /// forgotten by a journaled `PodsForgotten`: pod names seen once do not stay for ever.
    #[test]
    fn versions_of_pods_away_longer_than_the_retention_are_forgotten() {
        let mut e = engine();
        let mut out = Output::default();
        for (session, name) in [(1, "stays"), (2, "leaves"), (3, "returns")] {
            e.pod_hello(session, hello(name, &["g"], 1), T0, &mut out)
                .unwrap();
        }
        fired_and_finished(&mut e, "site", "v1", T0, &mut out);
        e.pod_disconnected(2, at(10));
        e.pod_disconnected(3, at(10));
        let retention = 3_600_000;
        // Connected pods heartbeat before every tick.
        let tick = |e: &mut Engine, sessions: &[u64], now: Timestamp, out: &mut Output| {
            for &session in sessions {
                let beat = PodMessage::Heartbeat {
                    holding: Vec::new(),
                    received: 0,
                    usage: None,
                };
                e.pod_message(session, beat, now, out);
            }
            e.tick(now, out);
        };
        // Past a lease, within the retention: remembered, and no catch-up on return.
        let back = at(10 + 2 * LEASE.as_millis() as u64);
        tick(&mut e, &[1], back, &mut out);
        e.pod_hello(4, hello("returns", &["g"], 1), back, &mut out)
            .unwrap();
        assert!(e
            .state()
            .broadcasts()
            .has_version("site", &pod("leaves"), "v1"));
        let mut now = back;
        while now < at(10 + retention - 1) {
            now = Timestamp(now.0 + LEASE.as_millis() as u64 / 2).min(at(10 + retention - 1));
            tick(&mut e, &[1, 4], now, &mut out);
        }
        assert!(
            e.state()
                .broadcasts()
                .has_version("site", &pod("leaves"), "v1"),
            "still there just before the retention ends"
        );
        tick(&mut e, &[1, 4], at(10 + retention + 1), &mut out);
        let forgotten: Vec<_> = out
            .events
            .iter()
            .filter_map(|event| match event {
                Event::PodsForgotten { pods } => Some(pods.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            forgotten,
            [vec![pod("leaves")]],
            "once, the pod that stayed away"
        );
        let broadcasts = e.state().broadcasts();
        assert!(!broadcasts.has_version("site", &pod("leaves"), "v1"));
        assert!(broadcasts.has_version("site", &pod("stays"), "v1"));
        assert!(broadcasts.has_version("site", &pod("returns"), "v1"));
        assert!(
            !out.events.iter().any(|ev| matches!(ev,
                Event::BroadcastTargetAdded { pod: p, .. } if p == &pod("returns"))),
            "a pod that came back within the retention is not caught up"
        );
        assert_eq!(&replayed(&out.events), e.state());
    }

    /// After a restart no pod is connected: those that applied a version count as away since
    /// the start, and are forgotten a retention later unless they come back.
    #[test]
    fn after_a_restart_pods_that_never_come_back_are_forgotten() {
        let mut e = engine();
        let mut out = Output::default();
        e.pod_hello(1, hello("gone", &["g"], 1), T0, &mut out)
            .unwrap();
        e.pod_hello(2, hello("back", &["g"], 1), T0, &mut out)
            .unwrap();
        fired_and_finished(&mut e, "site", "v1", T0, &mut out);
        let restart = at(100);
        let mut e = Engine::new(replayed(&out.events), e.config.clone(), restart);
        let mut out = Output::default();
        e.pod_hello(1, hello("back", &["g"], 1), restart, &mut out)
            .unwrap();
        e.tick(Timestamp(restart.0 + 3_600_000 + 1), &mut out);
        assert!(!e
            .state()
            .broadcasts()
            .has_version("site", &pod("gone"), "v1"));
        assert!(e
            .state()
            .broadcasts()
            .has_version("site", &pod("back"), "v1"));
    }

    #[test]
    fn replaying_a_broadcast_gives_the_same_state() {
        let mut e = engine();
        let mut out = Output::default();
        for i in 0..12 {
            e.pod_hello(i + 1, hello(&format!("p{i:02}"), &["g"], 1), T0, &mut out)
                .unwrap();
        }
        let spec = BroadcastSpec::new("app", group("g"), "pull")
            .with_strategy(Strategy::Tree { branches: 3 });
        e.fire_broadcast(spec, T0, &mut out).unwrap();
        e.dispatch(T0, &mut out);
        assert_eq!(&replayed(&out.events), e.state());
        // The tree's first level (3 nodes) pulls from the origin; nobody else may start.
        let running = e.state().broadcasts().by_id[&1]
            .targets
            .values()
            .filter(|t| t.state == TargetState::Running)
            .count();
        assert_eq!(running, 3);
    }
}

/// Adaptive prefetch, run in simulated time (one turn per millisecond, each turn's output
/// reaching the pods at once): three pods whose tasks take no time (each finishes 5 a
/// millisecond) and one whose tasks take 100 ms, 2 slots each, and a deep backlog. No pod
/// ever holds more leased-but-unstarted tasks than it starts in about 10 ms at its rate,
/// the fast pods get a queue, the slow one stays strict, and a pod that joins mid-run is
/// leased work in its first turn.
mod adaptive_prefetch {
    use std::collections::VecDeque;

    use super::*;

    const FAST_PER_MS: usize = 5;
    const SLOW_MS: u64 = 100;
    const SLOTS: u32 = 2;

    struct SimPod {
        name: String,
        session: u64,
        fast: bool,
        /// Leases in the order they were assigned; the first `SLOTS` are running, with
        /// the time each started.
        queue: VecDeque<(AttemptRef, Option<u64>)>,
    }

    impl SimPod {
        /// What it finishes at `t` (ms), and starts the next ones.
        fn turn(&mut self, t: u64) -> Vec<AttemptRef> {
            let mut done = Vec::new();
            if self.fast {
                for _ in 0..FAST_PER_MS {
                    match self.queue.pop_front() {
                        Some((a, _)) => done.push(a),
                        None => break,
                    }
                }
            } else {
                while let Some((a, Some(started))) = self.queue.front().copied() {
                    if started + SLOW_MS > t {
                        break;
                    }
                    self.queue.pop_front();
                    done.push(a);
                }
                // The two oldest may have finished in any order; only front ones here.
            }
            for (_, started) in self.queue.iter_mut().take(SLOTS as usize) {
                started.get_or_insert(t);
            }
            done
        }

        fn unstarted(&self) -> usize {
            self.queue.len().saturating_sub(SLOTS as usize)
        }
    }

    fn join(e: &mut Engine, name: &str, session: u64, fast: bool, t: u64) -> SimPod {
        let mut h = hello(name, &["g"], SLOTS);
        h.adaptive_prefetch = 1024;
        e.pod_hello(session, h, at(t), &mut Output::default())
            .unwrap();
        SimPod {
            name: name.to_owned(),
            session,
            fast,
            queue: VecDeque::new(),
        }
    }

    #[test]
    fn the_queue_follows_each_pods_pace() {
        let mut e = engine();
        let mut out = Output::default();
        e.submit((0..30_000).map(|_| spec("g")).collect(), T0, &mut out)
            .unwrap();
        let mut pods: Vec<SimPod> = (0..3)
            .map(|i| join(&mut e, &format!("fast-{i}"), i + 1, true, 0))
            .collect();
        pods.push(join(&mut e, "slow", 4, false, 0));
        let mut most_unstarted = [0_usize; 5];
        for t in 1..=1_500_u64 {
            if t == 1_000 {
                pods.push(join(&mut e, "late", 5, true, t));
            }
            let mut out = Output::default();
            for pod in &mut pods {
                for attempt in pod.turn(t) {
                    let finished = PodMessage::Finished {
                        attempt,
                        outcome: Ok(Bytes::new()),
                    };
                    e.pod_message(pod.session, finished, at(t), &mut out);
                }
            }
            e.dispatch(at(t), &mut out);
            for event in &out.events {
                if let Event::TaskAssigned { attempt, pod, .. } = event {
                    let sim = pods
                        .iter_mut()
                        .find(|p| p.name == pod.as_str())
                        .expect("a known pod");
                    sim.queue.push_back(((*attempt).into(), None));
                }
            }
            if t == 1_000 {
                let late = pods.last().expect("the late pod");
                assert!(
                    !late.queue.is_empty(),
                    "the late pod got no work in its first turn"
                );
            }
            for (i, pod) in pods.iter().enumerate() {
                most_unstarted[i] = most_unstarted[i].max(pod.unstarted());
            }
        }
        // A fast pod starts 5 a millisecond: 50 in 10 ms.
        for (i, pod) in pods.iter().enumerate().filter(|(_, p)| p.fast) {
            assert!(
                most_unstarted[i] <= 50,
                "{} held {} unstarted leases",
                pod.name,
                most_unstarted[i]
            );
            assert!(
                most_unstarted[i] >= 25,
                "{} got no queue to hide the round trip ({})",
                pod.name,
                most_unstarted[i]
            );
        }
        // The slow pod starts 2 per 100 ms: nothing within 10 ms.
        assert_eq!(most_unstarted[3], 0, "the slow pod was leased work ahead");
    }
}

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use mawex_api::pod::AttemptRef;
use mawex_api::{
    Attempt, ErrorKind, GroupName, GroupSettings, Limits, MissedTicks, Outcome, PendingChange,
    PodId, RetryHint, RetryPolicy, ScheduleName, ScheduleSpec, TaskError, TaskId, TaskSpec,
    Timestamp,
};

use super::{Journal, MemoryJournal};
use crate::codec::{decode_record, encode_records};
use crate::state::{Event, MasterState, RequeueReason};
use crate::testing::{accepted, fold};

fn id(n: u8) -> TaskId {
    let mut bytes = [0u8; 16];
    bytes[6] = 0x70; // version 7
    bytes[15] = n;
    TaskId::from_bytes(bytes).expect("non-nil")
}

/// One of every event, with fixed contents: what the golden files hold.
fn golden_events() -> Vec<Event> {
    let group = GroupName::new("golden").expect("valid");
    let pod = PodId::new("pod-a").expect("valid");
    let spec = TaskSpec::new(group.clone(), "resize", Bytes::from_static(b"cat.png"))
        .with_id(id(1))
        .with_priority(-3)
        .with_limits(
            Limits::default()
                .with_timeout(Duration::from_millis(1500))
                .with_memory_bytes(1 << 20),
        );
    let second = TaskSpec::new(group, "noop", Bytes::new()).with_id(id(2));
    let a1 = AttemptRef {
        task: id(1),
        attempt: Attempt(1),
    };
    let a2 = AttemptRef {
        task: id(1),
        attempt: Attempt(2),
    };
    vec![
        Event::TaskAccepted {
            spec: spec.into(),
            at: Timestamp(1_700_000_000_000),
        },
        Event::TaskAccepted {
            spec: second.into(),
            at: Timestamp(1_700_000_000_001),
        },
        Event::TaskAssigned {
            attempt: a1.into(),
            pod: pod.clone(),
            at: Timestamp(1_700_000_000_002),
        },
        Event::TaskRequeued {
            attempt: a1.into(),
            reason: RequeueReason::LeaseExpired,
            at: Timestamp(1_700_000_000_003),
        },
        Event::TaskAssigned {
            attempt: a2.into(),
            pod,
            at: Timestamp(1_700_000_000_004),
        },
        Event::TaskFinished {
            attempt: a2.into(),
            outcome: Outcome::Failed(TaskError::new(ErrorKind::Panicked, "boom")).into(),
            at: Timestamp(1_700_000_000_005),
        },
        Event::TaskCancelled {
            task: id(2),
            at: Timestamp(1_700_000_000_006),
        },
        Event::TaskRequeued {
            attempt: a2.into(),
            reason: RequeueReason::Returned,
            at: Timestamp(1_700_000_000_007),
        },
        Event::TaskRequeued {
            attempt: a2.into(),
            reason: RequeueReason::PodLeft,
            at: Timestamp(1_700_000_000_008),
        },
        Event::TaskFinished {
            attempt: a1.into(),
            outcome: Outcome::Succeeded(Bytes::from_static(b"out")).into(),
            at: Timestamp(1_700_000_000_009),
        },
        Event::TasksForgotten { tasks: vec![id(2)] },
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn write_framed(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (seq, bytes) in records {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn read_framed(mut data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let seq = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
        records.push((seq, data[12..12 + len].to_vec()));
        data = &data[12 + len..];
    }
    records
}

/// One more of every kind format 2 added: retry policies, delays, retry hints, scheduled retries.
fn golden_events_v2() -> Vec<Event> {
    let mut events = golden_events();
    let group = GroupName::new("golden").expect("valid");
    let spec = TaskSpec::new(group, "flaky", Bytes::from_static(b"again"))
        .with_id(id(3))
        .with_retry(
            RetryPolicy::new(4)
                .with_base_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(10)),
        )
        .with_run_at(Timestamp(1_700_000_000_050));
    let a1 = AttemptRef {
        task: id(3),
        attempt: Attempt(1),
    };
    events.push(Event::TaskAccepted {
        spec: spec.into(),
        at: Timestamp(1_700_000_000_010),
    });
    events.push(Event::TaskAssigned {
        attempt: a1.into(),
        pod: PodId::new("pod-b").expect("valid"),
        at: Timestamp(1_700_000_000_051),
    });
    events.push(Event::TaskRetryScheduled {
        attempt: a1.into(),
        error: TaskError::new(ErrorKind::LeaseExpired, "silent")
            .with_retry(RetryHint::After(Duration::from_millis(70)))
            .into(),
        retry_at: Timestamp(1_700_000_000_122),
        at: Timestamp(1_700_000_000_052),
    });
    events.push(Event::TaskFinished {
        attempt: a1.into(),
        outcome: Outcome::Failed(
            TaskError::new(ErrorKind::Handler, "no").with_retry(RetryHint::Never),
        )
        .into(),
        at: Timestamp(1_700_000_000_053),
    });
    events.push(Event::TasksRetried {
        tasks: vec![id(3)],
        at: Timestamp(1_700_000_000_054),
    });
    events.push(Event::GroupConfigured {
        group: GroupName::new("golden").expect("valid"),
        settings: GroupSettings::default()
            .with_paused(true)
            .with_max_concurrency(Some(2))
            .into(),
    });
    events.push(Event::TaskAccepted {
        spec: TaskSpec::new(
            GroupName::new("golden").expect("valid"),
            "once",
            Bytes::new(),
        )
        .with_id(id(4))
        .with_dedup("nightly-report", Duration::from_secs(3600))
        .into(),
        at: Timestamp(1_700_000_000_055),
    });
    events.push(Event::TasksUpdated {
        tasks: vec![id(4)],
        change: PendingChange::default()
            .move_to(GroupName::new("elsewhere").expect("valid"))
            .priority(7)
            .to_front()
            .into(),
    });
    let schedule = ScheduleSpec::new(
        ScheduleName::new("nightly").expect("valid"),
        "0 3 * * *",
        TaskSpec::new(
            GroupName::new("golden").expect("valid"),
            "report",
            Bytes::new(),
        )
        .with_id(id(5)),
    )
    .in_time_zone("Europe/Prague")
    .on_missed(MissedTicks::RunOnce);
    events.push(Event::ScheduleCreated {
        spec: schedule.clone().into(),
        at: Timestamp(1_700_000_000_060),
    });
    events.push(Event::SchedulePaused {
        name: schedule.name.clone(),
        paused: true,
        at: Timestamp(1_700_000_000_061),
    });
    events.push(Event::ScheduleSkipped {
        name: schedule.name.clone(),
        through: Timestamp(1_700_000_000_062),
    });
    events.push(Event::ScheduleFired {
        name: schedule.name.clone(),
        tick: Timestamp(1_700_000_000_063),
        task: schedule.task.clone().with_id(id(6)).into(),
        at: Timestamp(1_700_000_000_064),
    });
    events.push(Event::ScheduleDeleted {
        name: schedule.name.clone(),
    });
    events
}

/// With `MAWEX_WRITE_GOLDEN=<version>`, writes the golden records (two of them) and snapshot
/// of `events` in the current format. Only when that format is introduced: later, the files
/// are what every future version must still read.
fn write_golden_if_asked(version: u8, events: &[Event]) {
    if std::env::var("MAWEX_WRITE_GOLDEN").as_deref() != Ok(version.to_string().as_str()) {
        return;
    }
    assert!(
        !golden_dir()
            .join(format!("journal-v{version}.records"))
            .exists(),
        "the format-{version} golden files exist: they are written once, never again"
    );
    let mut j = MemoryJournal::new();
    j.append(1, &events[..6]).expect("append");
    j.append(7, &events[6..]).expect("append");
    std::fs::write(
        golden_dir().join(format!("journal-v{version}.records")),
        write_framed(&j.raw_records()),
    )
    .expect("write");
    let mut state = MasterState::new();
    events.iter().for_each(|e| state.apply(e));
    j.snapshot(events.len() as u64, &state).expect("snapshot");
    std::fs::write(
        golden_dir().join(format!("journal-v{version}.snapshot")),
        j.raw_snapshot().expect("snapshot"),
    )
    .expect("write");
}

/// Decodes golden records and snapshot of `version` and compares them with `events`.
fn check_golden(version: u8, events: &[Event]) {
    let records_path = golden_dir().join(format!("journal-v{version}.records"));
    let snapshot_path = golden_dir().join(format!("journal-v{version}.snapshot"));
    let records = read_framed(&std::fs::read(&records_path).expect("golden records present"));
    assert_eq!(records.len(), 2);
    let mut j = MemoryJournal::new();
    // From format 8 on, a record takes the oldest format that holds its events: the first
    // golden record may be of an older one.
    for (seq, bytes) in &records {
        assert!(bytes[0] <= version, "golden file of format {version}");
        j.write_raw_record(*seq, bytes);
    }
    assert_eq!(
        records[1].1[0], version,
        "the last record is of format {version}"
    );
    let recovered = j.recover().expect("golden records decode");
    let decoded: Vec<Event> = recovered.events.into_iter().map(|(_, e)| e).collect();
    assert_eq!(decoded, events);

    let mut expected = MasterState::new();
    events.iter().for_each(|e| expected.apply(e));
    let mut j = MemoryJournal::new();
    j.write_raw_snapshot(&std::fs::read(&snapshot_path).expect("golden snapshot present"));
    let (seq, mut state) = j
        .recover()
        .expect("golden snapshot decodes")
        .snapshot
        .expect("a snapshot");
    state.rebuild_indexes();
    assert_eq!(seq, events.len() as u64);
    assert_eq!(state, expected);
}

/// Format 1 golden files, written by the first release. Never regenerate them: every future
/// version must decode them to exactly these events and this state.
#[test]
fn golden_v1_records_and_snapshot_decode() {
    check_golden(1, &golden_events());
}

/// Format 2 golden files. Written once with
/// `MAWEX_WRITE_GOLDEN=2 cargo test -p mawex-core golden` when format 2 was introduced.
#[test]
fn golden_v2_records_and_snapshot_decode() {
    let events = golden_events_v2();
    write_golden_if_asked(2, &events);
    check_golden(2, &events);
}

/// One more of every kind format 3 added: the broadcast events, and a target's task events.
fn golden_events_v3() -> Vec<Event> {
    let mut events = golden_events_v2();
    let group = GroupName::new("golden").expect("valid");
    let (a, b) = (
        PodId::new("pod-a").expect("valid"),
        PodId::new("pod-b").expect("valid"),
    );
    let spec = mawex_api::BroadcastSpec::new("site", group, "deploy")
        .with_version("v1.2.3")
        .with_payload(Bytes::from_static(b"artifact"))
        .with_strategy(mawex_api::Strategy::Tree { branches: 2 })
        .with_origin_address("origin:873");
    events.push(Event::BroadcastFired {
        id: 1,
        spec: Box::new(spec.into()),
        targets: vec![(a.clone(), id(10))],
        already: vec![b],
        at: Timestamp(1_700_000_001_000),
    });
    let attempt = AttemptRef {
        task: id(10),
        attempt: Attempt(1),
    };
    events.push(Event::TaskAssigned {
        attempt: attempt.into(),
        pod: a.clone(),
        at: Timestamp(1_700_000_001_001),
    });
    events.push(Event::BroadcastPullStarted {
        task: id(10),
        source: mawex_api::Source::Origin.into(),
    });
    events.push(Event::TaskFinished {
        attempt: attempt.into(),
        outcome: Outcome::Succeeded(Bytes::new()).into(),
        at: Timestamp(1_700_000_001_200),
    });
    events.push(Event::BroadcastTargetAdded {
        id: 1,
        pod: PodId::new("pod-c").expect("valid"),
        task: id(11),
        at: Timestamp(1_700_000_001_300),
    });
    events.push(Event::BroadcastTargetUnreachable {
        task: id(11),
        at: Timestamp(1_700_000_001_350),
    });
    events.push(Event::BroadcastAborted {
        id: 1,
        at: Timestamp(1_700_000_001_400),
    });
    events
}

/// Format 3 golden files. Written once with
/// `MAWEX_WRITE_GOLDEN=3 cargo test -p mawex-core golden` when format 3 was introduced.
#[test]
fn golden_v3_records_and_snapshot_decode() {
    let events = golden_events_v3();
    write_golden_if_asked(3, &events);
    check_golden(3, &events);
}

/// Format 4 golden files: format 3's events and state, with the format byte under the
/// checksum. Written once with `MAWEX_WRITE_GOLDEN=4 cargo test -p mawex-core golden`.
#[test]
fn golden_v4_records_and_snapshot_decode() {
    let events = golden_events_v3();
    write_golden_if_asked(4, &events);
    check_golden(4, &events);
}

/// Format 5 added `BroadcastsForgotten` (the snapshot format stays 4: the state's layout did
/// not change, so `journal-v5.snapshot` is a format-4 snapshot of these events).
fn golden_events_v5() -> Vec<Event> {
    let mut events = golden_events_v3();
    events.push(Event::BroadcastsForgotten { ids: vec![1, 7] });
    events
}

/// Format 5 golden files. Written once with
/// `MAWEX_WRITE_GOLDEN=5 cargo test -p mawex-core golden` when format 5 was introduced.
#[test]
fn golden_v5_records_and_snapshot_decode() {
    let events = golden_events_v5();
    write_golden_if_asked(5, &events);
    check_golden(5, &events);
}

/// Format 6 added `PodsForgotten` (the snapshot format stays 4): `pod-a` forgets the
/// version it applied.
fn golden_events_v6() -> Vec<Event> {
    let mut events = golden_events_v5();
    events.push(Event::PodsForgotten {
        pods: vec![PodId::new("pod-a").expect("valid")],
    });
    events
}

/// Format 6 golden files. Written once with
/// `MAWEX_WRITE_GOLDEN=6 cargo test -p mawex-core golden` when format 6 was introduced.
#[test]
fn golden_v6_records_and_snapshot_decode() {
    let events = golden_events_v6();
    write_golden_if_asked(6, &events);
    check_golden(6, &events);
}

/// Format 7 added `PodBound`, and snapshot format 5 the pod owners it records: `pod-b`
/// is bound to a token and a certificate's subject.
fn golden_events_v7() -> Vec<Event> {
    let mut events = golden_events_v6();
    events.push(Event::PodBound {
        pod: PodId::new("pod-b").expect("valid"),
        owner: crate::state::stored::PodOwner {
            token: Some("fleet".to_owned()),
            certificate: Some("dns:pod-b.example".to_owned()),
        },
    });
    events
}

/// Format 7 golden files. Written once with
/// `MAWEX_WRITE_GOLDEN=7 cargo test -p mawex-core golden` when format 7 was introduced.
#[test]
fn golden_v7_records_and_snapshot_decode() {
    let events = golden_events_v7();
    write_golden_if_asked(7, &events);
    check_golden(7, &events);
}

/// Format 8 added the workflow events, and snapshot format 7 the workflows: a graph of three
/// nodes (`b` after `a`; `c` after `a` whatever its outcome, without its output), `a`
/// cancelled, `b` cancelled by it, `c` unblocked, `b` revived.
fn golden_events_v8() -> Vec<Event> {
    use crate::state::stored::{Edge, GraphRecord, Links};
    use mawex_api::{DependencyPolicy, GraphId};
    let mut events = golden_events_v7();
    let graph = GraphId::from_bytes([0x42; 16]).expect("non-nil");
    let group = GroupName::new("golden").expect("valid");
    let node = |n: u8, name: &str, after: Vec<Edge>| {
        let spec =
            TaskSpec::new(group.clone(), "step", Bytes::from(name.to_owned())).with_id(id(n));
        let links = Links {
            graph: Some((graph, name.into())),
            after: after.into(),
            output_limit: Some(64),
            cancelled_by: None,
        };
        (spec.into(), links)
    };
    let edge = |n: u8, policy, pass_output| Edge {
        task: id(n),
        policy,
        pass_output,
    };
    let at = |ms: u64| Timestamp(1_700_000_100_000 + ms);
    events.push(Event::WorkflowAccepted {
        graph: Some(Box::new(GraphRecord {
            id: graph,
            nodes: vec![id(40), id(41), id(42)],
            at: at(0),
        })),
        tasks: vec![
            node(40, "a", Vec::new()),
            node(
                41,
                "b",
                vec![edge(40, DependencyPolicy::AllSucceeded, true)],
            ),
            node(
                42,
                "c",
                vec![edge(40, DependencyPolicy::AllFinished, false)],
            ),
        ],
        at: at(0),
    });
    events.push(Event::TaskCancelled {
        task: id(40),
        at: at(1),
    });
    events.push(Event::TasksCancelledByDependency {
        tasks: vec![(id(41), id(40))],
        at: at(1),
    });
    events.push(Event::TasksUnblocked {
        tasks: vec![id(42)],
        at: at(1),
    });
    events.push(Event::TasksRevived {
        tasks: vec![id(41)],
        at: at(2),
    });
    events
}

/// Format 8 golden files (their snapshot is of format 7). Written once with
/// `MAWEX_WRITE_GOLDEN=8 cargo test -p mawex-core golden` when format 8 was introduced.
#[test]
fn golden_v8_records_and_snapshot_decode() {
    let events = golden_events_v8();
    write_golden_if_asked(8, &events);
    check_golden(8, &events);
    let snapshot = std::fs::read(golden_dir().join("journal-v8.snapshot")).expect("present");
    assert_eq!(
        snapshot[0], 7,
        "a state with workflows is a format-7 snapshot"
    );
    let (seq, decoded) = crate::codec::decode_snapshot(&snapshot).expect("decodes");
    let again = crate::codec::encode_snapshot(seq, &decoded).expect("encode");
    assert_eq!(
        again, snapshot,
        "the format-7 snapshot re-encodes unchanged"
    );
}

/// A batch without workflow events is written in format 7, which versions before workflows
/// read; one with them in format 8.
#[test]
fn records_take_the_oldest_format_that_holds_them() {
    let events = golden_events_v8();
    let plain = encode_records(1, &events[..3], usize::MAX).expect("encode");
    assert_eq!(plain[0].1[0], 7);
    let last = events.len() - 1;
    let workflow = encode_records(1, &events[last..], usize::MAX).expect("encode");
    assert_eq!(workflow[0].1[0], 8);
}

/// What is written depends on the stored types only (`crate::state::stored`), never on how
/// the API types serialize: the format-7 golden records re-encode byte for byte from what
/// they decode to, and so do the bodies (all after the checksum) of the format-3 to 6 ones,
/// the format-3 ones written when events still embedded the API types; the snapshots' states
/// survive the current snapshot format (whose own golden file re-encodes byte for byte, in
/// `golden_snapshot_v6_decodes_and_re_encodes_unchanged`). A field added to an API type
/// leaves this test green (the bytes cannot see it); a change to a stored type turns it red,
/// and needs a new format number (ARCHITECTURE.md, "Changing the journal format").
#[test]
fn written_bytes_depend_on_the_stored_types_only() {
    for (version, compared) in [(8, 0), (7, 0), (6, 5), (5, 5), (4, 5), (3, 5)] {
        let golden = read_framed(
            &std::fs::read(golden_dir().join(format!("journal-v{version}.records")))
                .expect("golden records present"),
        );
        for (seq, bytes) in &golden {
            let events = decode_record(bytes).expect("decode");
            let again = encode_records(*seq, &events, usize::MAX).expect("encode");
            assert_eq!(again.len(), 1);
            assert_eq!(
                &again[0].1[compared..],
                &bytes[compared..],
                "format-{version} record {seq} re-encodes unchanged"
            );
        }
        // The snapshots of these versions are of formats 4 and 5: what they decode to
        // re-encodes (in format 6) to the same state.
        let snapshot = std::fs::read(golden_dir().join(format!("journal-v{version}.snapshot")))
            .expect("golden snapshot present");
        let (last_seq, mut state) = crate::codec::decode_snapshot(&snapshot).expect("decode");
        state.rebuild_indexes();
        let again = crate::codec::encode_snapshot(last_seq, &state).expect("encode");
        assert_eq!(
            crate::codec::decode_snapshot(&again).expect("decode"),
            (last_seq, state),
            "the format-{version} snapshot's state survives format 6"
        );
    }
}

/// Snapshot format 6: the state of the format-7 golden events, its tasks in chunks. Written
/// once with `MAWEX_WRITE_GOLDEN=snapshot-6 cargo test -p mawex-core golden` when format 6
/// was introduced; it decodes to that state and re-encodes byte for byte.
#[test]
fn golden_snapshot_v6_decodes_and_re_encodes_unchanged() {
    let events = golden_events_v7();
    let mut state = MasterState::new();
    events.iter().for_each(|e| state.apply(e));
    let path = golden_dir().join("snapshot-v6.snapshot");
    if std::env::var("MAWEX_WRITE_GOLDEN").as_deref() == Ok("snapshot-6") {
        assert!(
            !path.exists(),
            "the format-6 golden snapshot is written once"
        );
        let bytes = crate::codec::encode_snapshot(events.len() as u64, &state).expect("encode");
        std::fs::write(&path, bytes).expect("write");
    }
    let bytes = std::fs::read(&path).expect("golden snapshot present");
    assert_eq!(bytes[0], 6, "a format-6 snapshot");
    let (seq, decoded) = crate::codec::decode_snapshot(&bytes).expect("decodes");
    assert_eq!(seq, events.len() as u64);
    assert!(decoded.has_indexes(), "format 6 loads with its indexes");
    assert_eq!(decoded, state);
    let again = crate::codec::encode_snapshot(seq, &decoded).expect("encode");
    assert_eq!(again, bytes, "the format-6 snapshot re-encodes unchanged");
}

/// The primitives that stored types share with the API encode as the format fixed them:
/// a name as its string, an id as its 16 bytes, a fieldless enum as its variant's index.
/// Reordering a variant or changing such a type's encoding fails here.
#[test]
fn shared_primitives_encode_as_pinned() {
    use mawex_api::{MissedTicks, QueuePosition, ScheduleName, TargetState, TaskState};
    fn bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encode")
    }
    assert_eq!(bytes(&GroupName::new("ab").expect("valid")), b"\x02ab");
    assert_eq!(bytes(&ScheduleName::new("ab").expect("valid")), b"\x02ab");
    assert_eq!(bytes(&PodId::new("ab").expect("valid")), b"\x02ab");
    let mut id_bytes = vec![16u8];
    id_bytes.extend_from_slice(id(7).as_bytes());
    assert_eq!(bytes(&id(7)), id_bytes, "a task id is its 16 bytes");
    assert_eq!(bytes(&Timestamp(5)), [5]);
    let graph = mawex_api::GraphId::from_bytes([9; 16]).expect("non-nil");
    let mut graph_bytes = vec![16u8];
    graph_bytes.extend_from_slice(graph.as_bytes());
    assert_eq!(bytes(&graph), graph_bytes, "a graph id is its 16 bytes");
    assert_eq!(bytes(&mawex_api::DependencyPolicy::AllSucceeded), [0]);
    assert_eq!(bytes(&mawex_api::DependencyPolicy::AllFinished), [1]);
    assert_eq!(bytes(&TaskState::Blocked), [5]);
    assert_eq!(bytes(&Attempt(3)), [3]);
    let states = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];
    let kinds = [
        ErrorKind::Handler,
        ErrorKind::Panicked,
        ErrorKind::UnknownHandler,
        ErrorKind::TimedOut,
        ErrorKind::Cancelled,
        ErrorKind::Crashed,
        ErrorKind::NonZeroExit,
        ErrorKind::OutOfMemory,
        ErrorKind::Sandbox,
        ErrorKind::LeaseExpired,
    ];
    let targets = [
        TargetState::Waiting,
        TargetState::Running,
        TargetState::Done,
        TargetState::Failed,
        TargetState::AlreadyApplied,
        TargetState::Cancelled,
    ];
    let indexes = |encoded: Vec<Vec<u8>>| encoded.into_iter().map(|b| b[0]).collect::<Vec<_>>();
    assert_eq!(indexes(states.iter().map(bytes).collect()), [0, 1, 2, 3, 4]);
    assert_eq!(
        indexes(kinds.iter().map(bytes).collect()),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
    assert_eq!(
        indexes(targets.iter().map(bytes).collect()),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(bytes(&QueuePosition::Front), [0]);
    assert_eq!(bytes(&QueuePosition::Back), [1]);
    assert_eq!(bytes(&MissedTicks::Skip), [0]);
    assert_eq!(bytes(&MissedTicks::RunOnce), [1]);
}

#[test]
fn records_are_split_by_size_and_round_trip() {
    let events = golden_events();
    let records = encode_records(10, &events, 64).expect("encode");
    assert!(records.len() > 1, "a 64-byte cap splits the batch");
    let mut seq = 10;
    let mut decoded = Vec::new();
    for (first, bytes) in &records {
        assert_eq!(*first, seq);
        let batch = decode_record(bytes).expect("decode");
        seq += batch.len() as u64;
        decoded.extend(batch);
    }
    assert_eq!(decoded, events);
}

#[test]
fn every_flipped_bit_is_detected() {
    let (_, bytes) = encode_records(1, &golden_events()[..1], 1 << 20)
        .expect("encode")
        .remove(0);
    // Byte 0 too: the format is under the checksum from format 4 on.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        assert!(
            matches!(
                decode_record(&bad),
                Err(crate::codec::DecodeError::Damaged(_))
            ),
            "flip in byte {i} went unnoticed"
        );
    }
}

#[test]
fn a_flipped_snapshot_format_byte_is_detected() {
    let mut state = MasterState::new();
    golden_events_v3().iter().for_each(|e| state.apply(e));
    let bytes = crate::codec::encode_snapshot(7, &state).expect("encode");
    for format in [1, 2, 3, 4, 5, 7] {
        let mut bad = bytes.clone();
        bad[0] = format;
        match crate::codec::decode_snapshot(&bad) {
            Err(crate::CoreError::CorruptSnapshot(reason)) => {
                assert!(reason.contains("checksum"), "format {format}: {reason}")
            }
            other => panic!("format {format}: expected a checksum error, got {other:?}"),
        }
    }
}

// Recovery, snapshots, torn, corrupt and unknown records, gaps and ordering: the
// conformance suite (`crate::testing`), run by both journals below.

struct InMemory(MemoryJournal);

impl crate::testing::JournalUnderTest for InMemory {
    type Journal = MemoryJournal;
    fn open(&mut self) -> MemoryJournal {
        self.0.clone()
    }
    fn records(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.0.raw_records()
    }
    fn write_record(&mut self, seq: u64, bytes: &[u8]) {
        self.0.write_raw_record(seq, bytes)
    }
}

#[test]
fn the_memory_journal_passes_the_conformance_suite() {
    crate::testing::journal_suite(|| InMemory(MemoryJournal::new()));
}

struct OnDisk(tempfile::TempDir);

impl crate::testing::JournalUnderTest for OnDisk {
    type Journal = super::SledJournal;
    fn open(&mut self) -> super::SledJournal {
        super::SledJournal::open(self.0.path()).expect("open the sled journal")
    }
    fn records(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.open().raw_records().expect("read records")
    }
    fn write_record(&mut self, seq: u64, bytes: &[u8]) {
        self.open()
            .write_raw_record(seq, bytes)
            .expect("write a record")
    }
}

#[test]
fn the_sled_journal_passes_the_conformance_suite() {
    crate::testing::journal_suite(|| OnDisk(tempfile::tempdir().expect("a temp dir")));
}

/// The names of the snapshot files in `dir`.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the journal's directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("mawex-snapshot"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_snapshot_an_older_version_kept_in_sled_is_read_then_replaced_by_a_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let events = accepted(1, 8, 1);
    {
        let mut journal = super::SledJournal::open(dir.path()).expect("open");
        journal.recover().expect("recover");
        journal.append(1, &events[..5]).expect("append");
        journal
            .write_snapshot_in_tree(5, &fold(&events[..5]))
            .expect("the old way");
        journal.append(6, &events[5..]).expect("append");
    }
    let mut journal = super::SledJournal::open(dir.path()).expect("open");
    let recovered = journal.recover().expect("recover");
    assert_eq!(recovered.snapshot.as_ref().map(|(seq, _)| *seq), Some(5));
    assert_eq!(recovered.into_state(), (8, fold(&events)));

    journal.snapshot(8, &fold(&events)).expect("snapshot");
    drop(journal);
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("mawex-snapshot-{:020}", 8)]
    );
    let recovered = super::SledJournal::open(dir.path())
        .expect("open")
        .recover()
        .expect("recover");
    assert_eq!(recovered.snapshot.as_ref().map(|(seq, _)| *seq), Some(8));
    assert!(recovered.events.is_empty());
    assert_eq!(recovered.into_state(), (8, fold(&events)));

    // A version that kept snapshots in the tree reads a 12-byte manifest there: it must
    // find one it refuses, not none (it would start empty, the records being gone).
    let db = sled::open(dir.path()).expect("sled");
    let manifest = db
        .open_tree("snapshot")
        .expect("the tree")
        .get("manifest")
        .expect("read")
        .expect("a manifest");
    assert_ne!(
        manifest.len(),
        12,
        "an older version would take it for a snapshot"
    );
}

#[test]
fn a_new_snapshot_file_replaces_the_last_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let events = accepted(1, 6, 1);
    {
        let mut journal = super::SledJournal::open(dir.path()).expect("open");
        journal.recover().expect("recover");
        journal.append(1, &events[..3]).expect("append");
        journal.snapshot(3, &fold(&events[..3])).expect("snapshot");
        journal.append(4, &events[3..]).expect("append");
        journal.snapshot(6, &fold(&events)).expect("snapshot");
    }
    // What a crash while writing the next one leaves behind is ignored.
    std::fs::write(dir.path().join("mawex-snapshot.tmp"), b"half a snapshot").expect("write");
    let files = snapshot_files(dir.path());
    assert_eq!(
        files,
        vec![
            format!("mawex-snapshot-{:020}", 6),
            "mawex-snapshot.tmp".to_owned()
        ]
    );
    let recovered = super::SledJournal::open(dir.path())
        .expect("open")
        .recover()
        .expect("recover");
    assert_eq!(recovered.into_state(), (6, fold(&events)));
    assert_eq!(
        snapshot_files(dir.path()),
        files[..1],
        "the leftover is removed"
    );

    let path = dir.path().join(&files[0]);
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");
    match super::SledJournal::open(dir.path())
        .expect("open")
        .recover()
    {
        Err(crate::CoreError::CorruptSnapshot(reason)) => {
            assert!(reason.contains("checksum"), "{reason}")
        }
        other => panic!("expected CorruptSnapshot, got {other:?}"),
    }
}

//! The journal conformance suite (feature `testing`): every [`Journal`] implementation runs
//! the same scenarios, so the master can rely on one contract whatever stores its events.
//! Also the core's hot pieces one at a time, for micro-benchmarks ([`pieces`]).
//!
//! ```
//! use mawex_core::testing::{journal_suite, JournalUnderTest};
//! use mawex_core::MemoryJournal;
//!
//! struct InMemory(MemoryJournal);
//!
//! impl JournalUnderTest for InMemory {
//!     type Journal = MemoryJournal;
//!     fn open(&mut self) -> MemoryJournal {
//!         self.0.clone()
//!     }
//!     fn records(&mut self) -> Vec<(u64, Vec<u8>)> {
//!         self.0.raw_records()
//!     }
//!     fn write_record(&mut self, seq: u64, bytes: &[u8]) {
//!         self.0.write_raw_record(seq, bytes)
//!     }
//! }
//!
//! journal_suite(|| InMemory(MemoryJournal::new()));
//! ```

pub mod pieces;

use bytes::Bytes;
use mawex_api::{GroupName, TaskId, TaskSpec, Timestamp};

use crate::error::CoreError;
use crate::journal::{Journal, Repaired, MAX_RECORD_BYTES};
use crate::state::{Event, MasterState};

/// A journal implementation and its storage, as the suite drives them.
pub trait JournalUnderTest {
    /// The implementation under test.
    type Journal: Journal;

    /// Opens the journal on this storage. Each call after the first is a restart: the
    /// previous journal has been dropped, and what it made durable must be there.
    fn open(&mut self) -> Self::Journal;

    /// The records stored now, as `(first sequence number, bytes)` in sequence order.
    fn records(&mut self) -> Vec<(u64, Vec<u8>)>;

    /// Stores `bytes` as the record under `seq`, replacing what is there (damage on disk).
    fn write_record(&mut self, seq: u64, bytes: &[u8]);
}

/// A named scenario of the suite.
type Scenario<T> = (&'static str, fn(&mut T));

/// Runs every scenario, each on fresh storage from `new`. Panics, naming the scenario, at
/// the first contract violation.
pub fn journal_suite<T, F>(mut new: F)
where
    T: JournalUnderTest,
    F: FnMut() -> T,
{
    let scenarios: [Scenario<T>; 14] = [
        ("an empty journal recovers empty", recovers_empty),
        (
            "appended events recover in order after a restart",
            appends_recover,
        ),
        (
            "a batch larger than a record is split and recovers whole",
            large_batches,
        ),
        (
            "sequence numbers sort numerically, not by their bytes",
            numeric_order,
        ),
        (
            "a snapshot covers its records; the tail replays",
            snapshot_then_tail,
        ),
        ("the latest snapshot wins", latest_snapshot_wins),
        (
            "a damaged last record stops recovery; a repair drops it and appending goes on",
            damaged_last_record,
        ),
        (
            "a damaged record followed by good ones stops recovery; a repair drops it and all after",
            corrupt_record,
        ),
        (
            "a flipped format byte is damage, not an unknown format",
            flipped_format_byte,
        ),
        (
            "an intact record of an unknown format is an error and is kept, even by a repair",
            unknown_format,
        ),
        ("a gap in the sequence numbers stops recovery", sequence_gap),
        ("a repair of a sound journal drops nothing", sound_repair),
        (
            "a repair leaves what a snapshot covers alone",
            repair_after_snapshot,
        ),
        (
            "a snapshot written from another thread while appends go on covers only its records",
            snapshot_beside_appends,
        ),
    ];
    for (name, scenario) in scenarios {
        let mut storage = new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&mut storage);
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("journal conformance: {name}: {message}");
        }
    }
}

/// `n` distinct accepted tasks, numbered from `from`, with `payload` bytes each.
pub(crate) fn accepted(from: u64, n: u64, payload: usize) -> Vec<Event> {
    let group = GroupName::new("conformance").expect("a valid group name");
    (from..from + n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[6] = 0x70; // UUID version 7
            id[8..].copy_from_slice(&i.to_be_bytes());
            let spec = TaskSpec::new(group.clone(), "noop", Bytes::from(vec![b'x'; payload]))
                .with_id(TaskId::from_bytes(id).expect("not nil"));
            Event::TaskAccepted {
                spec: spec.into(),
                at: Timestamp(i),
            }
        })
        .collect()
}

/// Appends `events` in batches of `batch`, numbered from `first`; returns the next number.
fn append_all<J: Journal>(journal: &mut J, first: u64, events: &[Event], batch: usize) -> u64 {
    let mut seq = first;
    for chunk in events.chunks(batch) {
        journal.append(seq, chunk).expect("append");
        seq += chunk.len() as u64;
    }
    seq
}

/// Opens the journal, appends `events` from number 1 in batches of `batch`, and closes it.
fn written<T: JournalUnderTest>(storage: &mut T, events: &[Event], batch: usize) {
    let mut journal = storage.open();
    journal.recover().expect("recover");
    append_all(&mut journal, 1, events, batch);
}

/// Recovery must stop at the record under `seq`, for a reason that mentions `why`.
fn refuses<T: JournalUnderTest>(storage: &mut T, seq: u64, why: &str) {
    match storage.open().recover() {
        Err(CoreError::CorruptJournal { seq: bad, reason }) => {
            assert_eq!(bad, seq, "the error names the bad record");
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("expected CorruptJournal at {seq}, got {other:?}"),
    }
}

fn numbered(events: &[Event], first: u64) -> Vec<(u64, Event)> {
    (first..).zip(events.iter().cloned()).collect()
}

pub(crate) fn fold(events: &[Event]) -> MasterState {
    let mut state = MasterState::new();
    events.iter().for_each(|e| state.apply(e));
    state
}

fn recovers_empty<T: JournalUnderTest>(storage: &mut T) {
    let recovered = storage.open().recover().expect("recover");
    assert!(recovered.snapshot.is_none(), "a snapshot out of nowhere");
    assert!(recovered.events.is_empty(), "events out of nowhere");
    assert_eq!(recovered.last_seq(), 0);
}

fn appends_recover<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 10, 8);
    written(storage, &events, 3);
    let recovered = storage.open().recover().expect("recover after a restart");
    assert_eq!(recovered.events, numbered(&events, 1));
    assert_eq!(recovered.last_seq(), 10);
}

fn large_batches<T: JournalUnderTest>(storage: &mut T) {
    // About three records' worth in one append.
    let events = accepted(1, 12, MAX_RECORD_BYTES / 4);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        journal.append(1, &events).expect("append");
    }
    assert!(
        storage.records().len() >= 3,
        "a batch of {} bytes should span several records",
        12 * MAX_RECORD_BYTES / 4
    );
    let recovered = storage.open().recover().expect("recover");
    assert_eq!(recovered.events, numbered(&events, 1));
}

fn numeric_order<T: JournalUnderTest>(storage: &mut T) {
    // Records whose first numbers cross 255 → 256 and 65,535 → 65,536 in one batch each:
    // sorted as bytes of a little-endian or decimal key, they would come back out of order.
    let first = accepted(1, 254, 0);
    let events = accepted(255, 3, 0);
    let far = accepted(65_535, 2, 0);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        append_all(&mut journal, 1, &first, 254);
        append_all(&mut journal, 255, &events, 1);
        // Continue the numbering at 258 up to 65,534 in large batches of tiny events.
        let filler = accepted(258, 65_534 - 257, 0);
        append_all(&mut journal, 258, &filler, 4096);
        append_all(&mut journal, 65_535, &far, 1);
    }
    let recovered = storage.open().recover().expect("recover");
    let seqs: Vec<u64> = recovered.events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), 65_536);
    assert!(
        seqs.iter().zip(1..).all(|(s, expected)| *s == expected),
        "events out of sequence order"
    );
}

fn snapshot_beside_appends<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 2_000, 64);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        append_all(&mut journal, 1, &events[..500], 7);
        // A journal without a writer has its snapshots taken on the core thread: nothing
        // of this contract applies to it.
        let Some(mut writer) = journal.snapshot_writer().expect("a snapshot writer") else {
            return;
        };
        let state = fold(&events[..500]);
        std::thread::scope(|scope| {
            let snapshot = scope.spawn(move || writer.write(500, &state));
            append_all(&mut journal, 501, &events[500..], 3);
            snapshot
                .join()
                .expect("the writer's thread")
                .expect("snapshot");
        });
    }
    let recovered = storage.open().recover().expect("recover");
    let (seq, _) = recovered.snapshot.as_ref().expect("the snapshot");
    assert_eq!(*seq, 500);
    assert_eq!(recovered.events, numbered(&events[500..], 501));
    assert_eq!(recovered.into_state(), (2_000, fold(&events)));
    assert!(
        storage.records().iter().all(|(seq, _)| *seq > 500),
        "records the snapshot covers are dropped"
    );
}

fn snapshot_then_tail<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 8, 8);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        append_all(&mut journal, 1, &events[..5], 2);
        journal.snapshot(5, &fold(&events[..5])).expect("snapshot");
        append_all(&mut journal, 6, &events[5..], 2);
    }
    assert!(
        storage.records().iter().all(|(seq, _)| *seq > 5),
        "records covered by the snapshot are gone"
    );
    let recovered = storage.open().recover().expect("recover");
    let (snapshot_seq, _) = recovered.snapshot.as_ref().expect("the snapshot");
    assert_eq!(*snapshot_seq, 5);
    assert_eq!(recovered.events, numbered(&events[5..], 6));
    let (last, state) = recovered.into_state();
    assert_eq!(last, 8);
    assert_eq!(state, fold(&events));
}

fn latest_snapshot_wins<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 6, 8);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        append_all(&mut journal, 1, &events[..2], 2);
        journal.snapshot(2, &fold(&events[..2])).expect("snapshot");
        append_all(&mut journal, 3, &events[2..4], 2);
        journal.snapshot(4, &fold(&events[..4])).expect("snapshot");
        append_all(&mut journal, 5, &events[4..], 2);
    }
    let recovered = storage.open().recover().expect("recover");
    assert_eq!(recovered.snapshot.as_ref().map(|(s, _)| *s), Some(4));
    let (last, state) = recovered.into_state();
    assert_eq!(last, 6);
    assert_eq!(state, fold(&events));
}

fn damaged_last_record<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 6, 8);
    written(storage, &events, 3);
    let (seq, bytes) = storage.records().pop().expect("a record");
    assert_eq!(seq, 4);
    // Half a record: storage that writes values whole never leaves this, so it is damage
    // (and may have been acknowledged), not a write a crash interrupted.
    storage.write_record(seq, &bytes[..bytes.len() / 2]);
    refuses(storage, 4, "checksum");
    assert_eq!(storage.records().len(), 2, "recovery deletes nothing");

    let mut journal = storage.open();
    let repaired = journal.repair().expect("repair");
    assert_eq!(
        dropped_seqs(&repaired),
        [4],
        "the repair names what it drops"
    );
    let recovered = journal.recover().expect("a repaired journal recovers");
    assert_eq!(recovered.events, numbered(&events[..3], 1));
    // The master goes on from the last good event: the same numbers are written again.
    let again = accepted(100, 2, 8);
    journal.append(4, &again).expect("append after a repair");
    drop(journal);
    let recovered = storage.open().recover().expect("recover");
    let mut expected = numbered(&events[..3], 1);
    expected.extend(numbered(&again, 4));
    assert_eq!(recovered.events, expected);
}

fn corrupt_record<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 6, 8);
    written(storage, &events, 2);
    let records = storage.records();
    let (seq, mut bytes) = records[1].clone();
    assert_eq!(seq, 3);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    storage.write_record(seq, &bytes);
    refuses(storage, 3, "checksum");
    assert_eq!(storage.records().len(), records.len(), "nothing is deleted");

    let repaired = storage.open().repair().expect("repair");
    assert_eq!(dropped_seqs(&repaired), [3, 5]);
    assert!(repaired.dropped[0].reason.contains("checksum"));
    assert!(repaired.dropped[1]
        .reason
        .contains("follows the damaged record at sequence 3"));
    let recovered = storage.open().recover().expect("recover after the repair");
    assert_eq!(recovered.events, numbered(&events[..2], 1));
}

fn flipped_format_byte<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 4, 8);
    written(storage, &events, 2);
    for format in [crate::codec::RECORD_FORMAT_V3, 99] {
        let (seq, mut bytes) = storage.records().pop().expect("a record");
        bytes[0] = format;
        storage.write_record(seq, &bytes);
        refuses(storage, seq, "checksum");
    }
}

fn unknown_format<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 4, 8);
    written(storage, &events, 2);
    let (seq, bytes) = storage.records().pop().expect("a record");
    // A format from the future, sealed as every format from 4 on is.
    let future = crate::codec::seal(bytes, 99, 2);
    storage.write_record(seq, &future);
    match storage.open().recover() {
        Err(CoreError::UnreadableJournal { seq: bad, reason }) => {
            assert_eq!(bad, seq);
            assert!(reason.contains("format 99"), "{reason}");
        }
        other => panic!("expected UnreadableJournal at {seq}, got {other:?}"),
    }
    assert!(
        matches!(
            storage.open().repair(),
            Err(CoreError::UnreadableJournal { .. })
        ),
        "a repair never drops an intact record"
    );
    assert_eq!(storage.records().len(), 2, "the record is kept");
}

fn sound_repair<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 6, 8);
    written(storage, &events, 2);
    let repaired = storage.open().repair().expect("repair");
    assert_eq!(repaired, Repaired::default());
    assert_eq!(storage.records().len(), 3);
    let recovered = storage.open().recover().expect("recover");
    assert_eq!(recovered.events, numbered(&events, 1));
}

fn repair_after_snapshot<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 6, 8);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        append_all(&mut journal, 1, &events[..4], 2);
        journal.snapshot(4, &fold(&events[..4])).expect("snapshot");
        append_all(&mut journal, 5, &events[4..], 2);
    }
    // Garbage under a key the snapshot covers (left by an interrupted truncation) is not
    // read, so it is not damage either.
    storage.write_record(3, b"garbage");
    let (seq, mut bytes) = storage.records().pop().expect("a record");
    assert_eq!(seq, 5);
    bytes[9] ^= 1;
    storage.write_record(seq, &bytes);
    refuses(storage, 5, "checksum");
    let repaired = storage.open().repair().expect("repair");
    assert_eq!(dropped_seqs(&repaired), [5]);
    let (last, state) = storage.open().recover().expect("recover").into_state();
    assert_eq!(last, 4);
    assert_eq!(state, fold(&events[..4]));
}

fn dropped_seqs(repaired: &Repaired) -> Vec<u64> {
    repaired.dropped.iter().map(|d| d.seq).collect()
}

fn sequence_gap<T: JournalUnderTest>(storage: &mut T) {
    let events = accepted(1, 3, 8);
    {
        let mut journal = storage.open();
        journal.recover().expect("recover");
        append_all(&mut journal, 1, &events[..2], 2);
        journal.append(10, &events[2..]).expect("append");
    }
    refuses(storage, 10, "expected a record starting at sequence 3");
}

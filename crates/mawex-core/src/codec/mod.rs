//! The on-disk form of journal records and snapshots.
//!
//! A record is one commit batch (or a size-capped slice of one), stored under the sequence
//! number of its first event:
//!
//! ```text
//! [format: u8][crc32: u32 LE][event count: u32 LE][event]...[event]
//! ```
//!
//! From format 4 on the checksum covers the format byte and everything after the checksum
//! (formats 1 to 3 left the format byte out, so a flipped format byte went unnoticed). Every
//! later format must keep these first five bytes, so that a record this version cannot read
//! can still be told apart from a damaged one: an intact unknown format is "written by a
//! newer version", a mismatching one is damage.
//!
//! Events are bincode 2 (serde, standard config). The format byte is the envelope version:
//! a future format adds a number and decodes older ones through an upgrade, so a journal
//! written by any released version stays readable (the golden-file test checks this).

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) mod v1;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use mawex_api::TaskId;

use crate::error::CoreError;
use crate::state::{
    Event, MasterState, StateHead, StateLoader, TaskEntry, Workflows, WorkflowsOwned,
};

/// Format 1 (frozen in `v1.rs`): read, never written.
pub(crate) const RECORD_FORMAT_V1: u8 = 1;
/// Format 2: format 1 plus retry policies, delays and attempt failures. Read, never written.
pub(crate) const RECORD_FORMAT_V2: u8 = 2;
/// Format 3: format 2 plus the broadcast events (appended variants, so format 2 records
/// decode as they are). Read, never written.
pub(crate) const RECORD_FORMAT_V3: u8 = 3;
/// Format 4: format 3's events, with the format byte under the checksum. Read, never
/// written.
pub(crate) const RECORD_FORMAT_V4: u8 = 4;
/// Format 5: format 4 plus `BroadcastsForgotten` (an appended variant, so format 4 records
/// decode as they are). Read, never written.
pub(crate) const RECORD_FORMAT_V5: u8 = 5;
/// Format 6: format 5 plus `PodsForgotten` (appended). Read, never written.
pub(crate) const RECORD_FORMAT_V6: u8 = 6;
/// Format 7: format 6 plus `PodBound` (appended). Written for every record that holds none
/// of format 8's events, so that a version that reads 7 reads what a master writes until
/// workflows are used.
pub(crate) const RECORD_FORMAT_V7: u8 = 7;
/// Format 8: format 7 plus the workflow events (`WorkflowAccepted`, `TasksUnblocked`,
/// `TasksCancelledByDependency`, `TasksRevived`; appended). Written for records that hold
/// one of them.
pub(crate) const RECORD_FORMAT_V8: u8 = 8;
/// Snapshot format 1 (frozen): read, never written.
pub(crate) const SNAPSHOT_FORMAT_V1: u8 = 1;
/// Snapshot format 2: read through [`SnapshotV2`], never written.
pub(crate) const SNAPSHOT_FORMAT_V2: u8 = 2;
/// Snapshot format 3: format 2 plus broadcasts. Read, never written.
pub(crate) const SNAPSHOT_FORMAT_V3: u8 = 3;
/// Snapshot format 4: format 3's state, with the format byte under the checksum. Read
/// through [`SnapshotV4`], never written.
pub(crate) const SNAPSHOT_FORMAT_V4: u8 = 4;
/// Snapshot format 5: format 4 plus the pod owners. Read, never written.
pub(crate) const SNAPSHOT_FORMAT_V5: u8 = 5;
/// Format 6: format 5's state in frames, the tasks in chunks that decode in parallel (see
/// [`encode_snapshot`]). Written for a state without workflows.
pub(crate) const SNAPSHOT_FORMAT_V6: u8 = 6;
/// Format 7: format 6 plus a last frame with the workflows (each task's links, the graphs).
/// Written for a state that has some.
pub(crate) const SNAPSHOT_FORMAT_V7: u8 = 7;
/// Tasks in one chunk of a format-6 snapshot, at most: enough that a chunk is worth a hand-off
/// between threads, few enough that a million tasks make sixty chunks to share out.
const TASKS_PER_CHUNK: usize = 16_384;
/// Past this many bytes a chunk ends before its count of tasks is reached: large payloads
/// and outputs must not make a chunk outgrow its `u32` length.
const CHUNK_BYTES: usize = 64 << 20;
/// The most threads that decode a snapshot's chunks.
const MAX_DECODERS: usize = 4;
/// The newest format whose checksum leaves the format byte out.
const LAST_FORMAT_OUTSIDE_CHECKSUM: u8 = 3;
const HEADER_LEN: usize = 9;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `events` into records of at most about `max_bytes` each (an event larger than
/// that gets a record of its own). Returns `(first sequence number, bytes)` pairs.
pub(crate) fn encode_records(
    first_seq: u64,
    events: &[Event],
    max_bytes: usize,
) -> Result<Vec<(u64, Vec<u8>)>, CoreError> {
    let mut records = Vec::new();
    let mut start = first_seq;
    let mut count: u32 = 0;
    let mut buf = header_placeholder();
    let mut scratch = Vec::with_capacity(1024);
    // The oldest format that holds the record's events.
    let format = |v8: bool| {
        if v8 {
            RECORD_FORMAT_V8
        } else {
            RECORD_FORMAT_V7
        }
    };
    let mut v8 = false;
    for (seq, event) in (first_seq..).zip(events) {
        scratch.clear();
        bincode::serde::encode_into_std_write(event, &mut scratch, config())
            .map_err(|e| CoreError::Encode(e.to_string()))?;
        if count > 0 && buf.len() + scratch.len() > max_bytes {
            records.push((start, seal(buf, format(v8), count)));
            buf = header_placeholder();
            count = 0;
            start = seq;
            v8 = false;
        }
        buf.extend_from_slice(&scratch);
        count += 1;
        v8 |= event.needs_format_8();
    }
    if count > 0 {
        records.push((start, seal(buf, format(v8), count)));
    }
    Ok(records)
}

fn header_placeholder() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    buf
}

/// Fills in the header of `buf` (format, checksum, count) in `format`, 4 or later.
pub(crate) fn seal(mut buf: Vec<u8>, format: u8, count: u32) -> Vec<u8> {
    buf[0] = format;
    buf[5..9].copy_from_slice(&count.to_le_bytes());
    let crc = checksum(&buf);
    buf[1..5].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// The checksum of a whole envelope (header included) as its format defines it.
fn checksum(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if bytes[0] > LAST_FORMAT_OUTSIDE_CHECKSUM {
        hasher.update(&bytes[..1]);
    }
    hasher.update(&bytes[5..]);
    hasher.finalize()
}

/// Decodes one event of some record format, returning it and the bytes it used.
type DecodeEvent = fn(&[u8]) -> Result<(Event, usize), String>;

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Short or failing its checksum: the bytes changed after they were written.
    Damaged(String),
    /// Intact (checksum good) but not decodable by this version.
    Unreadable(String),
}

/// Checks the envelope and returns (format, payload after the count, count).
fn open<'a>(bytes: &'a [u8], what: &str) -> Result<(u8, u32, &'a [u8]), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "{what} is {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let actual = checksum(bytes);
    if stored != actual {
        return Err(format!(
            "{what} checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let count = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    Ok((bytes[0], count, &bytes[HEADER_LEN..]))
}

fn decode_one<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string())
}

/// Decodes one record into its events, checking checksum, format and length.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let (format, count, mut rest) = open(bytes, "record").map_err(DecodeError::Damaged)?;
    let decode: DecodeEvent = match format {
        RECORD_FORMAT_V1 => {
            |bytes| decode_one::<v1::EventV1>(bytes).map(|(e, used)| (e.into(), used))
        }
        RECORD_FORMAT_V2 | RECORD_FORMAT_V3 | RECORD_FORMAT_V4 | RECORD_FORMAT_V5
        | RECORD_FORMAT_V6 | RECORD_FORMAT_V7 | RECORD_FORMAT_V8 => decode_one::<Event>,
        other => {
            return Err(DecodeError::Unreadable(format!(
                "record format {other} is unknown to this version (it reads formats 1 to \
                 {RECORD_FORMAT_V8}); was it written by a newer mawex?"
            )))
        }
    };
    // The count comes from disk: trust it only as far as the bytes allow.
    let mut events = Vec::with_capacity((count as usize).min(rest.len()));
    for i in 0..count {
        let (event, used) = decode(rest).map_err(|e| {
            DecodeError::Unreadable(format!("event {i} of {count} does not decode: {e}"))
        })?;
        events.push(event);
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(DecodeError::Unreadable(format!(
            "{} bytes left after {count} events",
            rest.len()
        )));
    }
    Ok(events)
}

#[derive(serde::Deserialize)]
struct SnapshotOwned {
    last_seq: u64,
    state: MasterState,
}

/// A format-2 snapshot: the state's fields before broadcasts were added (frozen layout).
#[derive(serde::Deserialize)]
struct SnapshotV2 {
    last_seq: u64,
    tasks: std::collections::BTreeMap<mawex_api::TaskId, crate::state::TaskEntry>,
    groups: std::collections::BTreeMap<mawex_api::GroupName, crate::state::stored::GroupSettings>,
    schedules: std::collections::BTreeMap<mawex_api::ScheduleName, crate::state::Schedule>,
    accepted: u64,
    results_recorded: u64,
}

/// A format-3 or 4 snapshot: the state's fields before pod owners were added (frozen
/// layout).
#[derive(serde::Deserialize)]
struct SnapshotV4 {
    last_seq: u64,
    tasks: std::collections::BTreeMap<mawex_api::TaskId, crate::state::TaskEntry>,
    groups: std::collections::BTreeMap<mawex_api::GroupName, crate::state::stored::GroupSettings>,
    schedules: std::collections::BTreeMap<mawex_api::ScheduleName, crate::state::Schedule>,
    accepted: u64,
    results_recorded: u64,
    broadcasts: crate::state::broadcasts::Broadcasts,
}

/// Encodes a snapshot of `state` after event `last_seq`, in format 6:
///
/// ```text
/// [header: format 6, crc32, count 1]
/// [frame: (last_seq, the state but its tasks, task count)]
/// [chunk count: u32 LE][frame: chunk]...
/// ```
///
/// A frame is a `u32 LE` length and that many bytes. The head is one bincode value; a chunk
/// is a `u32 LE` count and that many bincode `(id, task)` pairs (at most [`TASKS_PER_CHUNK`],
/// fewer once it passes [`CHUNK_BYTES`]), in id order across the chunks, so that chunks
/// decode on several threads and the tasks still go into the state in order.
pub(crate) fn encode_snapshot(last_seq: u64, state: &MasterState) -> Result<Vec<u8>, CoreError> {
    let mut buf = header_placeholder();
    let tasks = u64::try_from(state.len()).map_err(|e| CoreError::Encode(e.to_string()))?;
    let head = start_frame(&mut buf);
    encode_into(&mut buf, &(last_seq, state.head(), tasks))?;
    end_frame(&mut buf, head)?;
    let chunk_count_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let mut chunks: u32 = 0;
    let mut in_order = state.tasks_in_order().peekable();
    while in_order.peek().is_some() {
        let frame = start_frame(&mut buf);
        let count_at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        let mut count: u32 = 0;
        while (count as usize) < TASKS_PER_CHUNK && buf.len() - frame < CHUNK_BYTES {
            let Some(task) = in_order.next() else { break };
            encode_into(&mut buf, &task)?;
            count += 1;
        }
        buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        end_frame(&mut buf, frame)?;
        chunks = chunks
            .checked_add(1)
            .ok_or_else(|| CoreError::Encode("over 4 billion snapshot chunks".into()))?;
    }
    buf[chunk_count_at..chunk_count_at + 4].copy_from_slice(&chunks.to_le_bytes());
    if state.workflows().is_empty() {
        return Ok(seal(buf, SNAPSHOT_FORMAT_V6, 1));
    }
    let frame = start_frame(&mut buf);
    encode_into(&mut buf, &state.workflows().to_ref())?;
    end_frame(&mut buf, frame)?;
    Ok(seal(buf, SNAPSHOT_FORMAT_V7, 1))
}

fn encode_into<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), CoreError> {
    bincode::serde::encode_into_std_write(value, buf, config())
        .map(drop)
        .map_err(|e| CoreError::Encode(e.to_string()))
}

/// Starts a frame: room for its length, filled in by [`end_frame`]. Returns where it starts.
fn start_frame(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    at
}

fn end_frame(buf: &mut [u8], at: usize) -> Result<(), CoreError> {
    let len = u32::try_from(buf.len() - at - 4)
        .map_err(|_| CoreError::Encode("a snapshot frame over 4 GiB".into()))?;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Splits bytes read from disk into frames, checking every length against what is left.
struct Frames<'a>(&'a [u8]);

impl<'a> Frames<'a> {
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let Some((head, rest)) = self.0.split_first_chunk::<4>() else {
            return Err(format!("the snapshot ends inside {what}"));
        };
        self.0 = rest;
        Ok(u32::from_le_bytes(*head))
    }

    fn frame(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.u32(what)?).map_err(|e| e.to_string())?;
        if len > self.0.len() {
            return Err(format!(
                "{what} is {len} bytes, more than the {} left",
                self.0.len()
            ));
        }
        let (frame, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(frame)
    }
}

/// Decodes one frame that must be `T` exactly.
fn decode_frame<T: DeserializeOwned>(frame: &[u8], what: &str) -> Result<T, String> {
    let (value, used) = decode_one::<T>(frame).map_err(|e| format!("{what}: {e}"))?;
    if used != frame.len() {
        return Err(format!("{what}: {} bytes left over", frame.len() - used));
    }
    Ok(value)
}

/// Decodes one chunk: its count, then that many `(id, task)` pairs, each task put behind
/// its `Arc` as it is decoded.
fn decode_chunk(frame: &[u8], what: &str) -> Result<Vec<(TaskId, Arc<TaskEntry>)>, String> {
    let mut rest = Frames(frame);
    let count = rest.u32(what)?;
    // The count comes from disk: trust it only up to a chunk's size.
    let mut tasks = Vec::with_capacity((count as usize).min(TASKS_PER_CHUNK));
    let mut rest = rest.0;
    for i in 0..count {
        let ((id, entry), used) = decode_one::<(TaskId, TaskEntry)>(rest)
            .map_err(|e| format!("{what}: task {i} of {count}: {e}"))?;
        tasks.push((id, Arc::new(entry)));
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(format!("{what}: {} bytes left over", rest.len()));
    }
    Ok(tasks)
}

/// Decodes a format-6 snapshot (after its header), or a format-7 one (`workflows`: with its
/// last frame).
fn decode_snapshot_v6(bytes: &[u8], workflows: bool) -> Result<(u64, MasterState), String> {
    let mut frames = Frames(bytes);
    let (last_seq, head, tasks): (u64, StateHead, u64) =
        decode_frame(frames.frame("the state's head")?, "the state's head")?;
    let count = frames.u32("the chunk count")?;
    // From disk: no more chunks than there are bytes for their lengths.
    let mut chunks = Vec::with_capacity((count as usize).min(frames.0.len() / 4));
    for i in 0..count {
        chunks.push(frames.frame(&format!("chunk {i} of {count}"))?);
    }
    let workflows = match workflows {
        true => Some(decode_frame::<WorkflowsOwned>(
            frames.frame("the workflows")?,
            "the workflows",
        )?),
        false => None,
    };
    if !frames.0.is_empty() {
        return Err(format!("{} bytes left after the chunks", frames.0.len()));
    }
    let mut loader = StateLoader::new(head);
    decode_chunks(&chunks, |tasks| loader.push(tasks))?;
    if let Some(workflows) = workflows {
        loader.set_workflows(Workflows::from_owned(workflows));
    }
    if u64::try_from(loader.len()).ok() != Some(tasks) {
        return Err(format!(
            "the snapshot says {tasks} tasks and holds {}",
            loader.len()
        ));
    }
    Ok((last_seq, loader.finish()))
}

/// Decodes `chunks` on up to [`MAX_DECODERS`] threads and hands each chunk's tasks to `take`
/// in chunk order, on this thread, while the others decode.
fn decode_chunks(
    chunks: &[&[u8]],
    mut take: impl FnMut(Vec<(TaskId, Arc<TaskEntry>)>) -> Result<(), String>,
) -> Result<(), String> {
    let decode = |i: usize| decode_chunk(chunks[i], &format!("chunk {i} of {}", chunks.len()));
    // One core, or one chunk: no thread to hand off to; this one decodes (below).
    let decoders = match std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_DECODERS)
        .min(chunks.len())
    {
        0 | 1 => 0,
        n => n,
    };
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (sender, decoded) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for _ in 0..decoders {
            let sender = sender.clone();
            let (next, stop, decode) = (&next, &stop, &decode);
            let worker = std::thread::Builder::new()
                .name("mawex-decode".into())
                .spawn_scoped(scope, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if sender.send((i, decode(i))).is_err() {
                        break;
                    }
                });
            match worker {
                Ok(worker) => workers.push(worker),
                // Fewer threads, or none: this one decodes what they leave.
                Err(_) => break,
            }
        }
        drop(sender);
        // Chunks finish out of order; each waits here until the ones before it are taken.
        let mut early = BTreeMap::new();
        let mut wanted = 0;
        let mut result = decoded.iter().try_for_each(|(i, tasks)| {
            early.insert(i, tasks?);
            while let Some(tasks) = early.remove(&wanted) {
                take(tasks)?;
                wanted += 1;
            }
            Ok(())
        });
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        for worker in workers {
            if worker.join().is_err() && result.is_ok() {
                result = Err("a thread decoding the snapshot panicked".into());
            }
        }
        // What no thread took (none could be started), decoded here.
        while result.is_ok() && wanted < chunks.len() {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= chunks.len() {
                break;
            }
            result = decode(i).and_then(&mut take);
            wanted += 1;
        }
        result
    })
}

/// Decodes a snapshot into `(last_seq, state)`.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<(u64, MasterState), CoreError> {
    let (format, _, rest) = open(bytes, "snapshot").map_err(CoreError::CorruptSnapshot)?;
    let (snapshot, used) = match format {
        SNAPSHOT_FORMAT_V1 => {
            decode_one::<v1::SnapshotV1>(rest).map(|(s, used)| (s.upgrade(), used))
        }
        SNAPSHOT_FORMAT_V2 => decode_one::<SnapshotV2>(rest).map(|(s, used)| {
            let state = MasterState::from_parts(
                s.tasks,
                s.groups,
                s.schedules,
                s.accepted,
                s.results_recorded,
                Default::default(),
            );
            ((s.last_seq, state), used)
        }),
        SNAPSHOT_FORMAT_V3 | SNAPSHOT_FORMAT_V4 => {
            decode_one::<SnapshotV4>(rest).map(|(s, used)| {
                let state = MasterState::from_parts(
                    s.tasks,
                    s.groups,
                    s.schedules,
                    s.accepted,
                    s.results_recorded,
                    s.broadcasts,
                );
                ((s.last_seq, state), used)
            })
        }
        SNAPSHOT_FORMAT_V5 => {
            decode_one::<SnapshotOwned>(rest).map(|(s, used)| ((s.last_seq, s.state), used))
        }
        SNAPSHOT_FORMAT_V6 => {
            decode_snapshot_v6(rest, false).map(|snapshot| (snapshot, rest.len()))
        }
        SNAPSHOT_FORMAT_V7 => decode_snapshot_v6(rest, true).map(|snapshot| (snapshot, rest.len())),
        other => {
            return Err(CoreError::CorruptSnapshot(format!(
                "snapshot format {other} is unknown to this version"
            )))
        }
    }
    .map_err(CoreError::CorruptSnapshot)?;
    if used != rest.len() {
        return Err(CoreError::CorruptSnapshot(format!(
            "{} bytes left after the snapshot",
            rest.len() - used
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use mawex_api::{GroupName, Timestamp};

    use super::*;

    /// A state of more than two chunks of tasks: three fairness keys, some delayed, some
    /// with a dedup key, in two groups.
    fn chunky_state() -> MasterState {
        let groups = [
            GroupName::new("a").expect("valid"),
            GroupName::new("b").expect("valid"),
        ];
        let mut state = MasterState::new();
        for i in 0..(2 * TASKS_PER_CHUNK + 100) {
            let mut spec = mawex_api::TaskSpec::new(groups[i % 7 / 6].clone(), "h", "p")
                .with_fairness_key(["x", "y", "z"][i % 3]);
            if i % 10 == 0 {
                spec = spec.with_run_at(Timestamp(u64::MAX));
            }
            if i % 13 == 0 {
                spec = spec.with_dedup(format!("k{}", i % 5), std::time::Duration::from_secs(1));
            }
            state.apply(&Event::TaskAccepted {
                spec: spec.into(),
                at: Timestamp(1),
            });
        }
        state
    }

    /// Decoded on several threads, the tasks come out in order, with every index as a
    /// rebuild makes it (the state's equality compares the indexes too).
    #[test]
    fn a_snapshot_of_many_chunks_decodes_to_the_state_it_was() {
        let state = chunky_state();
        let bytes = encode_snapshot(9, &state).expect("encode");
        let (seq, decoded) = decode_snapshot(&bytes).expect("decode");
        assert_eq!(seq, 9);
        assert_eq!(decoded, state);
        let mut rebuilt = decoded.durable_copy();
        rebuilt.rebuild_indexes();
        assert_eq!(rebuilt, state);
    }

    /// The frames of a format-6 snapshot: head, chunk count, chunks.
    fn frames(bytes: &[u8]) -> (Vec<u8>, u32, Vec<Vec<u8>>) {
        let mut frames = Frames(&bytes[HEADER_LEN..]);
        let head = frames.frame("head").expect("head").to_vec();
        let count = frames.u32("count").expect("count");
        let chunks = (0..count)
            .map(|_| frames.frame("chunk").expect("chunk").to_vec())
            .collect();
        (head, count, chunks)
    }

    /// A snapshot of these frames, sealed: its checksum is good, so only the decoder's own
    /// checks stand between it and a wrong state.
    fn sealed(head: &[u8], count: u32, chunks: &[Vec<u8>]) -> Vec<u8> {
        fn push_frame(buf: &mut Vec<u8>, frame: &[u8]) {
            buf.extend_from_slice(&u32::try_from(frame.len()).expect("small").to_le_bytes());
            buf.extend_from_slice(frame);
        }
        let mut buf = header_placeholder();
        push_frame(&mut buf, head);
        buf.extend_from_slice(&count.to_le_bytes());
        for chunk in chunks {
            push_frame(&mut buf, chunk);
        }
        seal(buf, SNAPSHOT_FORMAT_V6, 1)
    }

    /// Large tasks end a chunk before its count: no chunk outgrows its `u32` length.
    #[test]
    fn a_chunk_of_large_tasks_ends_at_its_byte_budget() {
        let group = GroupName::new("big").expect("valid");
        let mib = vec![7u8; 1 << 20];
        let mut state = MasterState::new();
        for _ in 0..CHUNK_BYTES / mib.len() + 16 {
            let spec = mawex_api::TaskSpec::new(group.clone(), "h", mib.clone());
            state.apply(&Event::TaskAccepted {
                spec: spec.into(),
                at: Timestamp(1),
            });
        }
        let bytes = encode_snapshot(3, &state).expect("encode");
        let (_, count, chunks) = frames(&bytes);
        assert_eq!(count, 2, "the tasks fill more than one chunk's bytes");
        assert!(chunks[0].len() < CHUNK_BYTES + (2 << 20));
        assert_eq!(decode_snapshot(&bytes).expect("decode"), (3, state));
    }

    #[test]
    fn a_snapshot_whose_frames_do_not_add_up_is_refused() {
        let bytes = encode_snapshot(9, &chunky_state()).expect("encode");
        let (head, count, mut chunks) = frames(&bytes);
        assert_eq!(count, 3);
        assert_eq!(
            sealed(&head, count, &chunks),
            bytes,
            "the frames reassemble"
        );
        let refused = |bytes: Vec<u8>| match decode_snapshot(&bytes) {
            Err(CoreError::CorruptSnapshot(reason)) => reason,
            other => panic!("expected a refusal, got {:?}", other.map(|(seq, _)| seq)),
        };
        // Chunks out of order.
        chunks.swap(0, 1);
        assert!(refused(sealed(&head, count, &chunks)).contains("out of order"));
        chunks.swap(0, 1);
        // A chunk missing, so fewer tasks than the head says.
        let reason = refused(sealed(&head, 2, &chunks[..2]));
        assert!(reason.contains("tasks"), "{reason}");
        // More chunks counted than there are.
        let reason = refused(sealed(&head, 4, &chunks));
        assert!(reason.contains("chunk 3 of 4"), "{reason}");
        // A chunk cut short.
        let mut cut = chunks.clone();
        let half = cut[2].len() / 2;
        cut[2].truncate(half);
        let reason = refused(sealed(&head, count, &cut));
        assert!(reason.contains("chunk 2 of 3"), "{reason}");
    }
}

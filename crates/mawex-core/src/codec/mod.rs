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

use crate::error::CoreError;
use crate::state::{Event, MasterState};

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
/// Format of records written by this version: format 6 plus `PodBound` (appended).
pub(crate) const RECORD_FORMAT_V7: u8 = 7;
/// Snapshot format 1 (frozen): read, never written.
pub(crate) const SNAPSHOT_FORMAT_V1: u8 = 1;
/// Snapshot format 2: read through [`SnapshotV2`], never written.
pub(crate) const SNAPSHOT_FORMAT_V2: u8 = 2;
/// Snapshot format 3: format 2 plus broadcasts. Read, never written.
pub(crate) const SNAPSHOT_FORMAT_V3: u8 = 3;
/// Snapshot format 4: format 3's state, with the format byte under the checksum. Read
/// through [`SnapshotV4`], never written.
pub(crate) const SNAPSHOT_FORMAT_V4: u8 = 4;
/// Format of snapshots written by this version: format 4 plus the pod owners.
pub(crate) const SNAPSHOT_FORMAT_V5: u8 = 5;
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
    for (seq, event) in (first_seq..).zip(events) {
        scratch.clear();
        bincode::serde::encode_into_std_write(event, &mut scratch, config())
            .map_err(|e| CoreError::Encode(e.to_string()))?;
        if count > 0 && buf.len() + scratch.len() > max_bytes {
            records.push((start, seal(buf, RECORD_FORMAT_V7, count)));
            buf = header_placeholder();
            count = 0;
            start = seq;
        }
        buf.extend_from_slice(&scratch);
        count += 1;
    }
    if count > 0 {
        records.push((start, seal(buf, RECORD_FORMAT_V7, count)));
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
        | RECORD_FORMAT_V6 | RECORD_FORMAT_V7 => decode_one::<Event>,
        other => {
            return Err(DecodeError::Unreadable(format!(
                "record format {other} is unknown to this version (it reads formats 1 to \
                 {RECORD_FORMAT_V7}); was it written by a newer mawex?"
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

#[derive(Serialize)]
struct SnapshotRef<'a> {
    last_seq: u64,
    state: &'a MasterState,
}

/// Encodes a snapshot of `state` after event `last_seq`.
pub(crate) fn encode_snapshot(last_seq: u64, state: &MasterState) -> Result<Vec<u8>, CoreError> {
    let mut buf = header_placeholder();
    bincode::serde::encode_into_std_write(SnapshotRef { last_seq, state }, &mut buf, config())
        .map_err(|e| CoreError::Encode(e.to_string()))?;
    Ok(seal(buf, SNAPSHOT_FORMAT_V5, 1))
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

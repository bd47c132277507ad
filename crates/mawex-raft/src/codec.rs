//! How the store writes a value: `[format u8][crc32 u32 LE][bincode]`, the checksum over the
//! format byte and the body, as the journal's records do.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::RaftStoreError;

/// The one format so far.
const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 5;

fn checksum(format: u8, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[format]);
    hasher.update(body);
    hasher.finalize()
}

/// `value` as stored.
pub(crate) fn seal<T: Serialize>(
    value: &T,
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>, RaftStoreError> {
    let mut buf = vec![FORMAT_V1, 0, 0, 0, 0];
    bincode::serde::encode_into_std_write(value, &mut buf, bincode::config::standard()).map_err(
        |e| RaftStoreError::Encode {
            what: what(),
            reason: e.to_string(),
        },
    )?;
    let crc = checksum(FORMAT_V1, &buf[HEADER_LEN..]);
    buf[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// The value `bytes` hold, checked.
pub(crate) fn open<T: DeserializeOwned>(
    bytes: &[u8],
    what: &dyn Fn() -> String,
) -> Result<T, RaftStoreError> {
    let damaged = |reason: String| RaftStoreError::Damaged {
        what: what(),
        reason,
    };
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(damaged(format!(
            "{} bytes, shorter than a header",
            bytes.len()
        )));
    };
    let stored = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let actual = checksum(header[0], body);
    if stored != actual {
        return Err(damaged(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    if header[0] != FORMAT_V1 {
        return Err(damaged(format!(
            "format {} is unknown to this version (it reads format {FORMAT_V1}); was it written by a newer mawex?",
            header[0]
        )));
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(body, bincode::config::standard())
            .map_err(|e| damaged(e.to_string()))?;
    if used != body.len() {
        return Err(damaged(format!("{} bytes left over", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back_and_any_flipped_bit_is_seen() {
        let what = || "a test value".to_owned();
        let bytes = seal(&(7u64, "seven".to_owned()), &what).expect("seals");
        let back: (u64, String) = open(&bytes, &what).expect("opens");
        assert_eq!(back, (7, "seven".to_owned()));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(
                matches!(
                    open::<(u64, String)>(&bad, &what),
                    Err(RaftStoreError::Damaged { .. })
                ),
                "a flip in byte {i} went unseen"
            );
        }
        assert!(open::<(u64, String)>(&bytes[..3], &what).is_err());
    }
}

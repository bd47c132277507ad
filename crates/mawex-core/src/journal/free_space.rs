//! The space a journal keeps free on its disk.

use std::path::{Path, PathBuf};

use crate::CoreError;

/// Keeps `reserve` bytes free on the filesystem of a directory: a write that would leave
/// less is refused with [`CoreError::DiskFull`] before it begins. sled 0.34 does not survive a
/// failed write well (it may wait forever for it when closing), so every store kept in sled
/// (the journal, the Raft log) checks before it writes.
#[derive(Debug, Clone)]
pub struct FreeSpace {
    dir: PathBuf,
    reserve: u64,
}

impl FreeSpace {
    /// The reserve every store keeps unless told otherwise: 64 MiB.
    pub const DEFAULT_RESERVE: u64 = 64 << 20;

    /// Keeps `reserve` bytes free on the filesystem of `dir`; 0 checks nothing (a full disk
    /// then fails inside the storage itself).
    pub fn new(dir: impl AsRef<Path>, reserve: u64) -> Self {
        FreeSpace {
            dir: dir.as_ref().to_path_buf(),
            reserve,
        }
    }

    /// The same check with another reserve.
    #[must_use]
    pub fn with_reserve(mut self, reserve: u64) -> Self {
        self.reserve = reserve;
        self
    }

    /// Bytes kept free.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Refuses `operation` ("write", "snapshot") of `needed` bytes if it would eat into the
    /// reserve.
    ///
    /// # Errors
    /// [`CoreError::DiskFull`], or the filesystem cannot be asked.
    pub fn check(&self, operation: &'static str, needed: usize) -> Result<(), CoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        let stats = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| CoreError::Storage(Box::new(std::io::Error::from(e))))?;
        // `fsblkcnt_t` and `c_ulong` are narrower than 64 bits on some targets.
        #[allow(clippy::useless_conversion)]
        let free =
            u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size()));
        let needed = u64::try_from(needed).unwrap_or(u64::MAX);
        if free < self.reserve.saturating_add(needed) {
            return Err(CoreError::DiskFull {
                operation,
                free,
                reserve: self.reserve,
                needed,
            });
        }
        Ok(())
    }
}

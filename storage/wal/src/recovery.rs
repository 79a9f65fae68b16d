//! Opening a [`crate::LocalWal`]: directory locking and per-channel recovery.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::format::{channel_dir, list_segments, scan_segment, segment_path, sync_dir};
use crate::local::{SegmentMeta, StatsCounters};
use crate::{Lsn, WalError};

/// The recovered on-disk state of one channel.
pub(crate) struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub next_lsn: Lsn,
    pub active: File,
    pub active_len: u64,
}

/// Takes an exclusive advisory lock on `dir/LOCK`, held while the file is open.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(WalError::AlreadyOpen {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(WalError::io(format!("locking {}", path.display()), e)),
    }
}

/// Scans the segments of one channel, truncates a torn tail of the last one and
/// opens it for appending (creating segment 0 for a new channel).
pub(crate) fn recover_channel(
    root: &Path,
    id: u32,
    sync: bool,
    stats: &StatsCounters,
) -> Result<Recovered, WalError> {
    let dir = channel_dir(root, id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| WalError::io(format!("creating {}", dir.display()), e))?;
    let firsts =
        list_segments(&dir).map_err(|e| WalError::io(format!("listing {}", dir.display()), e))?;

    let mut segments = Vec::with_capacity(firsts.len().max(1));
    let mut expected: Option<Lsn> = None;
    let mut next_lsn = 0;
    for (i, &first_lsn) in firsts.iter().enumerate() {
        let path = segment_path(&dir, first_lsn);
        let is_last = i + 1 == firsts.len();
        if let Some(expected) = expected
            && expected != first_lsn
        {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "segment starts at lsn {first_lsn} but the previous segment ends before lsn {expected}"
                ),
            });
        }
        let scan = scan_segment(&path)
            .map_err(|e| WalError::io(format!("scanning {}", path.display()), e))?;
        if let Some(defect) = &scan.defect {
            if !is_last {
                return Err(WalError::Corrupt {
                    path,
                    offset: defect.offset,
                    reason: defect.kind.to_string(),
                });
            }
            tracing::warn!(
                channel = id,
                segment = %path.display(),
                offset = defect.offset,
                defect = %defect.kind,
                "truncating torn wal tail"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
            file.set_len(scan.valid_len)
                .map_err(|e| WalError::io(format!("truncating {}", path.display()), e))?;
            if sync {
                file.sync_all()
                    .map_err(|e| WalError::io(format!("syncing {}", path.display()), e))?;
                StatsCounters::add(&stats.fsyncs, 1);
            }
        }
        next_lsn = first_lsn + scan.records;
        expected = Some(next_lsn);
        segments.push(SegmentMeta {
            first_lsn,
            durable_len: scan.valid_len,
        });
    }

    if segments.is_empty() {
        let path = segment_path(&dir, 0);
        File::create_new(&path)
            .map_err(|e| WalError::io(format!("creating {}", path.display()), e))?;
        if sync {
            sync_dir(&dir).map_err(|e| WalError::io(format!("syncing {}", dir.display()), e))?;
            StatsCounters::add(&stats.fsyncs, 1);
        }
        segments.push(SegmentMeta {
            first_lsn: 0,
            durable_len: 0,
        });
    }

    let (active_first, active_len) = segments
        .last()
        .map_or((0, 0), |s| (s.first_lsn, s.durable_len));
    let path = segment_path(&dir, active_first);
    let active = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
    Ok(Recovered {
        segments,
        next_lsn,
        active,
        active_len,
    })
}

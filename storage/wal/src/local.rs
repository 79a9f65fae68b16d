//! [`LocalWal`]: a segmented, group-committing log on a local file system.
//!
//! Why hand-written: no well-kept crate offers a small, async, per-channel
//! segmented log with group commit and torn-tail recovery. `okaywal` and
//! `raft-engine` either pull in large dependency trees or do not fit the channel
//! model (independent dense LSN sequences per channel, with the caller deciding
//! when old records may go). The whole thing is a few hundred lines on top of
//! `std::fs`, `crc32fast` and a thread per channel.
//!
//! Concurrency model, per channel:
//! * `append` assigns LSNs and enqueues under the channel mutex (so queue order
//!   is LSN order), wakes the channel's writer thread and awaits a oneshot.
//! * The writer thread drains the whole queue, writes every frame, calls
//!   `sync_data` once and then completes all drained appends (group commit).
//! * The writer publishes, per segment, how many bytes are durable. Readers only
//!   read up to that length, so they never see records that are not yet durable.
//! * `truncate` deletes whole sealed segments (never the active one), oldest
//!   first, so the remaining files always form a contiguous suffix of the log.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::format::{FrameScanner, Scanned, channel_dir, segment_path, sync_dir};
use crate::recovery::{lock_dir, recover_channel};
use crate::writer::Writer;
use crate::{Lsn, Wal, WalError};

/// Default size at which a segment file is sealed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Largest payload a single record may have (the frame length field is a `u32`).
pub const MAX_RECORD_BYTES: usize = u32::MAX as usize;

/// Options for [`LocalWal::open`].
#[derive(Debug, Clone)]
pub struct LocalWalOptions {
    /// Root directory; created if missing.
    pub dir: PathBuf,
    /// Number of channels (`0..channels`). Must be at least 1.
    pub channels: u32,
    /// A segment is sealed once it reaches this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Whether to fsync. Default `true`; `false` only for benchmarks.
    pub sync: bool,
}

impl LocalWalOptions {
    /// Options with the default segment size and fsync enabled.
    pub fn new(dir: impl Into<PathBuf>, channels: u32) -> Self {
        Self {
            dir: dir.into(),
            channels,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync: true,
        }
    }
}

/// Counters summed over all channels since [`LocalWal::open`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Completed `append` calls.
    pub appends: u64,
    /// Records written.
    pub records: u64,
    /// Frame bytes written (headers included).
    pub bytes: u64,
    /// Group commits (one per drained batch of appends).
    pub commits: u64,
    /// `fsync`/`fdatasync` calls on segment files and directories.
    pub fsyncs: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
}

impl StatsCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An append waiting for the writer.
pub(crate) struct Pending {
    pub first_lsn: Lsn,
    pub records: Vec<Bytes>,
    pub done: oneshot::Sender<Result<Lsn, WalError>>,
}

/// What readers may see of one segment file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentMeta {
    pub first_lsn: Lsn,
    /// Bytes from the start of the file that are durable (valid frames only).
    pub durable_len: u64,
}

pub(crate) struct ChannelState {
    pub queue: Vec<Pending>,
    /// Next LSN to hand out to an append.
    pub next_lsn: Lsn,
    /// Sorted by `first_lsn`; the last one is the active segment. Never empty.
    pub segments: Vec<SegmentMeta>,
    /// Set when the [`LocalWal`] is dropped; the writer drains and exits.
    pub closing: bool,
    /// Set by the writer thread when it exits, for whatever reason.
    pub writer_gone: bool,
    /// Set when a write or fsync failed; the channel no longer accepts writes.
    pub failed: Option<String>,
    /// Test hook: while set, the writer leaves queued appends alone.
    #[cfg(test)]
    pub paused: bool,
}

impl ChannelState {
    /// Error to report to a new write, if the channel no longer accepts them.
    pub(crate) fn write_error(&self, channel: u32) -> Option<WalError> {
        if let Some(reason) = &self.failed {
            return Some(WalError::ChannelFailed {
                channel,
                reason: reason.clone(),
            });
        }
        (self.closing || self.writer_gone).then_some(WalError::Closed)
    }

    pub(crate) fn paused(&self) -> bool {
        #[cfg(test)]
        {
            self.paused
        }
        #[cfg(not(test))]
        {
            false
        }
    }
}

pub(crate) struct Channel {
    pub id: u32,
    pub dir: PathBuf,
    pub state: Mutex<ChannelState>,
    /// Signalled when the queue gains work or the log is closing.
    pub wake: Condvar,
}

/// A [`Wal`] stored in segment files under a local directory.
pub struct LocalWal {
    dir: PathBuf,
    channels: Vec<Arc<Channel>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<StatsCounters>,
    sync: bool,
    /// Holds an exclusive advisory lock on `dir/LOCK` for the lifetime of the log.
    _lock: File,
}

impl std::fmt::Debug for LocalWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWal")
            .field("dir", &self.dir)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// Runs blocking file-system work off the async runtime.
async fn run_blocking<T, F>(f: F) -> Result<T, WalError>
where
    F: FnOnce() -> Result<T, WalError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WalError::io("running a blocking wal task", io::Error::other(e)))?
}

impl LocalWal {
    /// Opens (creating if needed) the log in `opts.dir`, recovering every channel:
    /// a torn or corrupt tail of a channel's last segment is truncated away; any
    /// other corruption fails with [`WalError::Corrupt`].
    pub async fn open(opts: LocalWalOptions) -> Result<Self, WalError> {
        run_blocking(move || Self::open_blocking(opts)).await
    }

    fn open_blocking(opts: LocalWalOptions) -> Result<Self, WalError> {
        if opts.channels == 0 {
            return Err(WalError::InvalidOptions(
                "channels must be at least 1".into(),
            ));
        }
        if opts.segment_bytes == 0 {
            return Err(WalError::InvalidOptions(
                "segment_bytes must be at least 1".into(),
            ));
        }
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| WalError::io(format!("creating {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;

        let stats = Arc::new(StatsCounters::default());
        let mut recovered = Vec::with_capacity(opts.channels as usize);
        for id in 0..opts.channels {
            recovered.push(recover_channel(&dir, id, opts.sync, &stats)?);
        }
        if opts.sync {
            sync_dir(&dir).map_err(|e| WalError::io(format!("syncing {}", dir.display()), e))?;
        }

        let mut wal = LocalWal {
            dir: dir.clone(),
            channels: Vec::with_capacity(recovered.len()),
            writers: Mutex::new(Vec::new()),
            stats: Arc::clone(&stats),
            sync: opts.sync,
            _lock: lock,
        };
        for (id, rec) in (0..opts.channels).zip(recovered) {
            let active_first = rec.segments.last().map_or(0, |s| s.first_lsn);
            let channel = Arc::new(Channel {
                id,
                dir: channel_dir(&dir, id),
                state: Mutex::new(ChannelState {
                    queue: Vec::new(),
                    next_lsn: rec.next_lsn,
                    segments: rec.segments,
                    closing: false,
                    writer_gone: false,
                    failed: None,
                    #[cfg(test)]
                    paused: false,
                }),
                wake: Condvar::new(),
            });
            wal.channels.push(Arc::clone(&channel));
            let writer = Writer {
                channel,
                file: rec.active,
                active_first,
                active_len: rec.active_len,
                next_lsn: rec.next_lsn,
                segment_bytes: opts.segment_bytes,
                sync: opts.sync,
                stats: Arc::clone(&stats),
                buf: Vec::new(),
            };
            // On error `wal` is dropped here, which stops the writers already spawned.
            let handle = writer
                .spawn()
                .map_err(|e| WalError::io(format!("spawning wal writer for channel {id}"), e))?;
            wal.writers.lock().push(handle);
        }
        Ok(wal)
    }

    /// The root directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters summed over all channels.
    pub fn stats(&self) -> WalStats {
        let s = &self.stats;
        WalStats {
            appends: s.appends.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
        }
    }

    fn channel(&self, channel: u32) -> Result<&Arc<Channel>, WalError> {
        self.channels
            .get(channel as usize)
            .ok_or(WalError::UnknownChannel(channel))
    }

    /// Test hook: stops (or resumes) the writer of `channel` from draining its queue.
    #[cfg(test)]
    pub(crate) fn set_paused(&self, channel: u32, paused: bool) {
        if let Some(ch) = self.channels.get(channel as usize) {
            ch.state.lock().paused = paused;
            ch.wake.notify_all();
        }
    }

    /// Test hook: number of appends queued for the writer of `channel`.
    #[cfg(test)]
    pub(crate) fn queued(&self, channel: u32) -> usize {
        self.channels
            .get(channel as usize)
            .map_or(0, |ch| ch.state.lock().queue.len())
    }
}

impl Drop for LocalWal {
    fn drop(&mut self) {
        for ch in &self.channels {
            ch.state.lock().closing = true;
            ch.wake.notify_all();
        }
        // Writers finish (and fsync) whatever is still queued, then exit.
        for handle in self.writers.get_mut().drain(..) {
            if handle.join().is_err() {
                tracing::error!("wal writer thread panicked");
            }
        }
    }
}

/// Reads the durable records with lsn >= `from` from a snapshot of segments.
fn read_segments(
    dir: &Path,
    segments: &[SegmentMeta],
    from: Lsn,
) -> Result<Vec<(Lsn, Bytes)>, WalError> {
    let mut out = Vec::new();
    let mut payload = Vec::new();
    for seg in segments {
        if seg.durable_len == 0 {
            continue;
        }
        let path = segment_path(dir, seg.first_lsn);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Deleted by a concurrent truncate: its records were all discardable.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(WalError::io(format!("opening {}", path.display()), e)),
        };
        let reader = io::BufReader::with_capacity(1 << 20, file);
        let mut scanner = FrameScanner::new(reader, seg.durable_len);
        let mut lsn = seg.first_lsn;
        loop {
            let scanned = scanner
                .next_frame(&mut payload)
                .map_err(|e| WalError::io(format!("reading {}", path.display()), e))?;
            match scanned {
                Scanned::Frame => {
                    if lsn >= from {
                        out.push((lsn, Bytes::from(std::mem::take(&mut payload))));
                    }
                    lsn += 1;
                }
                Scanned::End => break,
                Scanned::Defect(defect) => {
                    return Err(WalError::Corrupt {
                        path,
                        offset: defect.offset,
                        reason: defect.kind.to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Deletes the given segments oldest first, then syncs the directory. Returns
/// the first LSNs of the segments that are gone (even when it fails midway).
fn delete_segments(dir: &Path, victims: &[Lsn], sync: bool) -> (Vec<Lsn>, Result<(), WalError>) {
    let mut deleted = Vec::with_capacity(victims.len());
    for &first_lsn in victims {
        let path = segment_path(dir, first_lsn);
        match std::fs::remove_file(&path) {
            Ok(()) => deleted.push(first_lsn),
            Err(e) if e.kind() == io::ErrorKind::NotFound => deleted.push(first_lsn),
            Err(e) => {
                return (
                    deleted,
                    Err(WalError::io(format!("deleting {}", path.display()), e)),
                );
            }
        }
    }
    let synced = if sync {
        sync_dir(dir).map_err(|e| WalError::io(format!("syncing {}", dir.display()), e))
    } else {
        Ok(())
    };
    (deleted, synced)
}

#[async_trait::async_trait]
impl Wal for LocalWal {
    fn channel_count(&self) -> u32 {
        self.channels.len() as u32
    }

    async fn append(&self, channel: u32, records: Vec<Bytes>) -> Result<Lsn, WalError> {
        let ch = self.channel(channel)?;
        if let Some(r) = records.iter().find(|r| r.len() > MAX_RECORD_BYTES) {
            return Err(WalError::RecordTooLarge {
                len: r.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let (done, rx) = oneshot::channel();
        {
            let mut st = ch.state.lock();
            if let Some(err) = st.write_error(ch.id) {
                return Err(err);
            }
            let first_lsn = st.next_lsn;
            st.next_lsn += records.len() as u64;
            st.queue.push(Pending {
                first_lsn,
                records,
                done,
            });
        }
        ch.wake.notify_one();
        rx.await.map_err(|_| WalError::Closed)?
    }

    async fn read_from(&self, channel: u32, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, WalError> {
        let ch = self.channel(channel)?;
        let snapshot: Vec<SegmentMeta> = {
            let st = ch.state.lock();
            // The last segment starting at or before `from` is the first one that
            // can hold `from`; if every segment starts after it, read them all.
            let start = st
                .segments
                .partition_point(|s| s.first_lsn <= from)
                .saturating_sub(1);
            st.segments[start..].to_vec()
        };
        let dir = ch.dir.clone();
        run_blocking(move || read_segments(&dir, &snapshot, from)).await
    }

    async fn truncate(&self, channel: u32, upto: Lsn) -> Result<(), WalError> {
        let ch = self.channel(channel)?;
        let victims: Vec<Lsn> = {
            let st = ch.state.lock();
            // Sealed segment i holds [first_i, first_{i+1}); the active one is never a victim.
            st.segments
                .windows(2)
                .take_while(|w| w[1].first_lsn <= upto)
                .map(|w| w[0].first_lsn)
                .collect()
        };
        if victims.is_empty() {
            return Ok(());
        }
        let dir = ch.dir.clone();
        let sync = self.sync;
        let (deleted, result) =
            run_blocking(move || Ok(delete_segments(&dir, &victims, sync))).await?;
        if sync && !deleted.is_empty() {
            StatsCounters::add(&self.stats.fsyncs, 1);
        }
        ch.state
            .lock()
            .segments
            .retain(|s| deleted.binary_search(&s.first_lsn).is_err());
        if !deleted.is_empty() {
            tracing::debug!(channel, upto, segments = deleted.len(), "truncated wal");
        }
        result
    }

    async fn next_lsn(&self, channel: u32) -> Result<Lsn, WalError> {
        let ch = self.channel(channel)?;
        let st = ch.state.lock();
        if let Some(reason) = &st.failed {
            return Err(WalError::ChannelFailed {
                channel,
                reason: reason.clone(),
            });
        }
        Ok(st.next_lsn)
    }
}

//! The per-channel writer thread of [`crate::LocalWal`] (group commit).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::format::{encode_frame, frame_bytes, segment_path, sync_dir};
use crate::local::{Channel, Pending, SegmentMeta, StatsCounters};
use crate::{Lsn, WalError};

/// Buffered frame bytes are written out once they exceed this.
const FLUSH_BYTES: usize = 1 << 20;

/// A failed write: what was being done, and the OS error.
type WriteFailure = (String, io::Error);

/// Owns the active segment file of one channel; the only code that writes it.
pub(crate) struct Writer {
    pub channel: Arc<Channel>,
    /// The active (last) segment, opened in append mode.
    pub file: File,
    pub active_first: Lsn,
    /// Logical length of the active segment, including buffered bytes.
    pub active_len: u64,
    /// LSN of the next record to write.
    pub next_lsn: Lsn,
    pub segment_bytes: u64,
    pub sync: bool,
    pub stats: Arc<StatsCounters>,
    /// Encoded frames not yet handed to the OS.
    pub buf: Vec<u8>,
}

/// Marks the channel's writer as gone when the thread exits (even by panic) and
/// fails everything still queued, so no append waits forever.
struct ExitGuard(Arc<Channel>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.writer_gone = true;
        let reason = st.failed.clone();
        for pending in st.queue.drain(..) {
            let err = match &reason {
                Some(reason) => WalError::ChannelFailed {
                    channel: self.0.id,
                    reason: reason.clone(),
                },
                None => WalError::Closed,
            };
            // The receiver may have been dropped; nothing to do then.
            let _ = pending.done.send(Err(err));
        }
    }
}

impl Writer {
    pub(crate) fn spawn(self) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("quiver-wal-{:04}", self.channel.id))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let _guard = ExitGuard(Arc::clone(&self.channel));
        loop {
            let batch = {
                let mut st = self.channel.state.lock();
                loop {
                    if !st.queue.is_empty() && (st.closing || !st.paused()) {
                        break;
                    }
                    if st.closing {
                        return;
                    }
                    self.channel.wake.wait(&mut st);
                }
                std::mem::take(&mut st.queue)
            };
            match self.commit(&batch) {
                Ok(()) => self.complete(batch),
                Err((context, source)) => {
                    self.fail(batch, &context, &source);
                    return;
                }
            }
        }
    }

    /// Writes every record of `batch` and makes it durable with one fsync
    /// (plus one per segment sealed on the way).
    fn commit(&mut self, batch: &[Pending]) -> Result<(), WriteFailure> {
        for pending in batch {
            debug_assert_eq!(pending.first_lsn, self.next_lsn);
            if !pending.records.is_empty() && self.active_len >= self.segment_bytes {
                self.rotate()?;
            }
            for record in &pending.records {
                encode_frame(&mut self.buf, record);
                self.active_len += frame_bytes(record.len());
                if self.buf.len() >= FLUSH_BYTES {
                    self.flush()?;
                }
            }
            self.next_lsn += pending.records.len() as u64;
        }
        self.flush()?;
        self.sync_active()?;
        self.publish_active();

        let records: u64 = batch.iter().map(|p| p.records.len() as u64).sum();
        StatsCounters::add(&self.stats.commits, 1);
        StatsCounters::add(&self.stats.appends, batch.len() as u64);
        StatsCounters::add(&self.stats.records, records);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WriteFailure> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| (self.describe("writing"), e))?;
        StatsCounters::add(&self.stats.bytes, self.buf.len() as u64);
        self.buf.clear();
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), WriteFailure> {
        if self.sync {
            self.file
                .sync_data()
                .map_err(|e| (self.describe("syncing"), e))?;
            StatsCounters::add(&self.stats.fsyncs, 1);
        }
        Ok(())
    }

    /// Lets readers see everything written to the active segment so far.
    /// Only call once those bytes are durable.
    fn publish_active(&self) {
        let mut st = self.channel.state.lock();
        if let Some(seg) = st.segments.last_mut() {
            debug_assert_eq!(seg.first_lsn, self.active_first);
            seg.durable_len = self.active_len;
        }
    }

    /// Seals the active segment and starts a new one at `next_lsn`.
    fn rotate(&mut self) -> Result<(), WriteFailure> {
        self.flush()?;
        self.sync_active()?;
        self.publish_active();

        let path = segment_path(&self.channel.dir, self.next_lsn);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| (format!("creating {}", path.display()), e))?;
        if self.sync {
            sync_dir(&self.channel.dir)
                .map_err(|e| (format!("syncing {}", self.channel.dir.display()), e))?;
            StatsCounters::add(&self.stats.fsyncs, 1);
        }
        self.file = file;
        self.active_first = self.next_lsn;
        self.active_len = 0;
        self.channel.state.lock().segments.push(SegmentMeta {
            first_lsn: self.next_lsn,
            durable_len: 0,
        });
        tracing::debug!(
            channel = self.channel.id,
            first_lsn = self.next_lsn,
            "started new wal segment"
        );
        Ok(())
    }

    fn complete(&self, batch: Vec<Pending>) {
        for pending in batch {
            // The appender may have gone away; the records are durable regardless.
            let _ = pending.done.send(Ok(pending.first_lsn));
        }
    }

    /// A write or fsync failed: after a failed fsync the page cache state is
    /// unknown, so the channel stops accepting writes; reopening re-runs recovery.
    fn fail(&self, batch: Vec<Pending>, context: &str, source: &io::Error) {
        tracing::error!(
            channel = self.channel.id,
            error = %source,
            "wal write failed while {context}; channel stops accepting writes"
        );
        self.channel.state.lock().failed = Some(format!("{context}: {source}"));
        for pending in batch {
            let err = WalError::io(context, io::Error::new(source.kind(), source.to_string()));
            let _ = pending.done.send(Err(err));
        }
        // Appends queued meanwhile are failed by the exit guard.
    }

    fn describe(&self, action: &str) -> String {
        let path = segment_path(&self.channel.dir, self.active_first);
        format!("{action} {}", path.display())
    }
}

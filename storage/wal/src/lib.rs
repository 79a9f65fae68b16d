//! The write-ahead log boundary trait and its local implementation.
//!
//! The WAL is the single source of truth for acknowledged writes: a record is
//! acknowledged only once it is durable (fsync'd). Everything downstream
//! (streaming workers, segments, metadata) is derived state that can be rebuilt
//! by replaying the log from the last checkpointed LSN.
//!
//! The log is split into independent *channels* (`0..channel_count()`); each
//! channel has its own dense LSN sequence starting at 0 and its own writer, so
//! channels never contend with each other.
//!
//! [`Wal`] is the boundary trait the rest of Quiver programs against;
//! [`LocalWal`] is the implementation backed by segment files on a local disk,
//! [`KafkaWal`] the one on a Kafka-protocol broker (one partition per channel).

mod format;
mod kafka;
mod local;
mod recovery;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use bytes::Bytes;

pub use kafka::{KafkaWal, KafkaWalConfig};
pub use local::{DEFAULT_SEGMENT_BYTES, LocalWal, LocalWalOptions, MAX_RECORD_BYTES, WalStats};

/// Log sequence number: increasing per channel, and consecutive within one
/// append (its records are `first, first + 1, ...`). [`LocalWal`]'s are dense
/// (0, 1, 2, ...); [`KafkaWal`]'s leave gaps between appends.
pub type Lsn = u64;

/// Errors returned by a [`Wal`].
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system level I/O failure.
    #[error("wal i/o error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Durable log content failed validation (bad checksum, truncated frame in a
    /// sealed segment, or a gap between segments).
    #[error("wal segment {} is corrupt at byte {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The channel id is not in `0..channel_count()`.
    #[error("unknown wal channel {0}")]
    UnknownChannel(u32),
    /// The log (or the channel's writer) has shut down.
    #[error("wal is closed")]
    Closed,
    /// A previous write or fsync on this channel failed; the channel refuses
    /// further writes until the log is reopened (which re-runs recovery).
    #[error("wal channel {channel} failed and no longer accepts writes: {reason}")]
    ChannelFailed { channel: u32, reason: String },
    /// A single record is larger than the frame format can express.
    #[error("wal record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    /// Another [`LocalWal`] (in this or another process) holds the directory lock.
    #[error("wal directory {} is already open", .dir.display())]
    AlreadyOpen { dir: PathBuf },
    /// The Kafka-protocol broker failed or could not be reached.
    #[error("wal broker request failed while {context}: {source}")]
    Broker {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The options passed to [`LocalWal::open`] are unusable.
    #[error("invalid wal options: {0}")]
    InvalidOptions(String),
}

impl WalError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        WalError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The write-ahead log boundary.
#[async_trait::async_trait]
pub trait Wal: Send + Sync + std::fmt::Debug {
    /// Number of channels (channels are 0..n).
    fn channel_count(&self) -> u32;

    /// Appends `records` to `channel` atomically-in-order, returns the LSN of the first one.
    /// Returns only after the records are durable (fsync). Concurrent appends on the
    /// same channel are group-committed (one fsync covers all appends queued meanwhile).
    ///
    /// An empty `records` acts as a barrier: it returns the next LSN once every
    /// append queued before it is durable. If this future is dropped after it was
    /// first polled, the records may still be written. If an error is returned the
    /// outcome is unknown (the records may or may not be in the log after reopen).
    async fn append(&self, channel: u32, records: Vec<Bytes>) -> Result<Lsn, WalError>;

    /// All durable records with lsn >= from, in LSN order.
    ///
    /// Records discarded by [`Wal::truncate`] are not returned, so the first
    /// returned LSN may be greater than `from`.
    async fn read_from(&self, channel: u32, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, WalError>;

    /// Lets the log discard records with lsn < upto (whole segment files whose
    /// records are all < upto are deleted).
    async fn truncate(&self, channel: u32, upto: Lsn) -> Result<(), WalError>;

    /// The LSN the next append will get.
    async fn next_lsn(&self, channel: u32) -> Result<Lsn, WalError>;
}

//! Storage formats: how rows look in the WAL, in sealed segments on object
//! storage, and in delete logs.
//!
//! * [`WalRecord`]: one shard's change at one commit timestamp (deleted
//!   primary keys and inserted rows, each an Arrow IPC batch).
//! * Sealed segments: one Parquet file per (table, shard, flush) holding the
//!   user columns plus the hidden insert timestamp; described by a
//!   [`SegmentMeta`] kept in the meta store.
//! * Delete logs: Parquet files of `(row, delete_ts)` pairs for a sealed
//!   segment, appended on every flush; together they form the segment's
//!   timestamped delete bitmap.
//!
//! * Segment indexes: DiskANN files per (segment, index) beside the
//!   segment, described by a [`SegmentIndexMeta`] in the meta store.
//!
//! The object store itself is `object_store`'s `ObjectStore`;
//! [`open_object_store`] builds it from configuration.

mod codec;
mod durable_local;
mod files;
mod index_manifest;
mod vector_column;
mod wal_record;

pub use codec::{decode_batch, encode_batch};
pub use durable_local::DurableLocalStore;
pub use files::{
    DeleteLogEntry, ObjectStoreConfig, ParquetObject, S3Config, SegmentMeta, delete_log_path,
    open_object_store, read_delete_log, read_parquet, read_parquet_columns, segment_path,
    write_delete_log, write_parquet, write_parquet_batches,
};
pub use index_manifest::{IndexFile, ROW_MAP_FILE, SegmentIndexMeta, segment_index_prefix};
pub use wal_record::{WalRecord, WalRecordKind};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("Arrow encoding failed")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Parquet encoding failed")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("object store request failed")]
    ObjectStore(#[from] object_store::Error),
    #[error("malformed WAL record: {0}")]
    MalformedRecord(String),
    #[error("invalid object store configuration: {0}")]
    Config(String),
    #[error("local copy {path} failed")]
    LocalCopy {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

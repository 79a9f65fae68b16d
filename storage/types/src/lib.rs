//! Core vocabulary shared by every Quiver layer, with no I/O and no SQL.
//!
//! This crate owns the identifiers (tables, shards, segments), the hybrid
//! [`Timestamp`] handed out by the coordinator's timestamp oracle, the table
//! schema model (including pgvector's `vector(n)` columns and their Arrow
//! representation), primary-key encoding and the primary-key → shard hash.
//! Everything above it (WAL records, segments, planner, frontend) speaks in
//! these types so that standalone and distributed mode agree byte for byte.

mod ids;
mod metric;
mod pk;
mod schema;
mod timestamp;

pub use ids::{IndexId, SegmentId, ShardId, TableId};
pub use metric::VectorMetric;
/// Distance kernels over `f32` slices.
pub mod distance {
    pub use crate::metric::{dot, l1, l2_squared};
}
pub use pk::{PkEncoder, PrimaryKey, shard_of};
pub use schema::{
    ColumnDef, ColumnDefault, ColumnType, INSERT_TS_COLUMN, PG_VECTOR_KEY, SchemaError,
    TableSchema, vector_data_type,
};
pub use timestamp::Timestamp;

//! Vector indexes across roles: catalog entries, build tasks for data
//! nodes, build status, and the per-segment vector search query nodes serve.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion_physical_expr_common::physical_expr::PhysicalExpr;
use quiver_segment::{SegmentIndexMeta, SegmentMeta};
use quiver_types::{IndexId, SegmentId, TableId, VectorMetric};
use serde::{Deserialize, Serialize};

use crate::ApiResult;

/// Build settings of a DiskANN index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Graph out-degree (R).
    pub max_degree: usize,
    /// Candidate list while building (L_build).
    pub build_search_list: usize,
    /// PQ bytes per vector kept in memory for search; 0 picks min(dim, 64).
    pub pq_bytes: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            max_degree: 64,
            build_search_list: 128,
            pq_bytes: 0,
        }
    }
}

/// What `CREATE INDEX` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    pub column: String,
    pub metric: VectorMetric,
    /// The access method as written (`diskann`, `hnsw`, `ivfflat`); every
    /// one is built as DiskANN.
    pub method: String,
    pub params: IndexParams,
}

/// An index in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexInfo {
    pub id: IndexId,
    pub table: TableId,
    #[serde(flatten)]
    pub def: IndexDef,
}

/// One segment's build, sent by the coordinator to a data node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexBuildTask {
    pub index: IndexInfo,
    /// Position of the indexed column among the table's user columns.
    pub column_index: usize,
    pub dim: usize,
    pub segment: SegmentMeta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Queued,
    Running,
    Done,
    /// Too few rows to be worth a graph; searched exactly.
    Skipped,
    Failed,
}

impl BuildState {
    pub fn name(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Done => "done",
            BuildState::Skipped => "skipped",
            BuildState::Failed => "failed",
        }
    }
}

/// One row of `quiver.index_builds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexBuildStatus {
    pub index: IndexInfo,
    pub segment: SegmentId,
    pub rows: u64,
    pub state: BuildState,
    pub duration_ms: Option<u64>,
    pub bytes: Option<u64>,
    pub error: Option<String>,
}

/// Merging sealed segments of one (table, shard) into one, without the
/// rows deleted long enough ago that no reader can still see them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionTask {
    pub new_segment: SegmentId,
    pub segments: Vec<SegmentMeta>,
    /// Per input segment, the rows to leave out (ascending).
    pub drop_rows: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionOutput {
    /// The merged segment, already in the object store (`None` when no row
    /// survived).
    pub segment: Option<SegmentMeta>,
    /// Per input segment: each row's position in the merged segment, or
    /// `u32::MAX` when it was left out.
    pub row_maps: Vec<Vec<u32>>,
}

/// Builds segment indexes and compacts segments (a data node).
#[async_trait]
pub trait DataApi: Send + Sync {
    /// Builds the index over the segment's vectors, stores its files in the
    /// object store and returns their manifest (not yet recorded anywhere).
    async fn build_index(&self, task: IndexBuildTask) -> ApiResult<SegmentIndexMeta>;
    /// Writes the merged segment of a compaction (not yet recorded anywhere).
    async fn compact(&self, task: CompactionTask) -> ApiResult<CompactionOutput>;
}

/// A top-k vector search over one segment or one shard's growing rows.
#[derive(Debug, Clone)]
pub struct VectorSearchRequest {
    /// Position of the vector column among the user columns.
    pub column: usize,
    pub metric: VectorMetric,
    pub query: Arc<Vec<f32>>,
    pub k: usize,
    /// DiskANN candidate list (`diskann.search_list`).
    pub search_list: usize,
    /// The index to use, if one exists for this column and metric.
    pub index: Option<IndexId>,
    /// Only rows for which this predicate is true.
    pub filter: Option<SearchFilter>,
    /// `None`: results carry every user column, and the caller ranks them
    /// by computing distances itself (the planned operator). `Some(columns)`:
    /// results carry just these user columns, then [`DISTANCE_COLUMN`], so a
    /// caller that needs no vectors back (the direct k-NN path) neither has
    /// them read from disk nor sent over the network.
    pub projection_with_distance: Option<Vec<usize>>,
}

/// The last column of a search result under
/// [`VectorSearchRequest::projection_with_distance`]: each row's distance to
/// the query as `quiver_index::exact::ordering_distance` defines it (squared
/// for `<->`), computed from the full vectors, so results of graph and exact
/// searches rank together.
pub const DISTANCE_COLUMN: &str = "quiver_ordering_distance";

/// `batch` with a [`DISTANCE_COLUMN`] of `distances` appended.
pub fn with_distance_column(
    batch: RecordBatch,
    distances: Vec<f32>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        DISTANCE_COLUMN,
        arrow::datatypes::DataType::Float32,
        false,
    )));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(arrow::array::Float32Array::from(distances)));
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
}

/// A search's WHERE clause, bound to just the user columns it reads (so
/// segments need not materialise the others, vectors above all).
#[derive(Debug, Clone)]
pub struct SearchFilter {
    /// Evaluated over a batch of `columns`, in that order, shaped `schema`.
    pub predicate: Arc<dyn PhysicalExpr>,
    /// Positions among the table's user columns, ascending.
    pub columns: Vec<usize>,
    /// The batch the predicate is bound to (a remote node needs it to
    /// decode the predicate).
    pub schema: SchemaRef,
}

/// How a segment was searched (shown by `EXPLAIN ANALYZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchStrategy {
    /// Graph search over the segment's DiskANN index.
    Index { search_list: usize, filtered: bool },
    /// Distances to every matching row.
    Exact,
    /// The graph search returned too few matching rows; re-ran exactly.
    IndexThenExact,
}

#[derive(Debug, Clone)]
pub struct SegmentSearchResult {
    /// At most k visible, matching rows (user columns), nearest first.
    pub rows: RecordBatch,
    pub strategy: SearchStrategy,
    /// Rows visible and matching the filter.
    pub matching: u64,
}

/// What a search of one segment would do (`EXPLAIN`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentSearchPlan {
    pub strategy: SearchStrategy,
    /// Rows visible and matching the filter.
    pub matching: u64,
    pub rows: u64,
}

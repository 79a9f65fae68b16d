//! The query node: serves sealed segments.
//!
//! Segments assigned by the coordinator are registered at once and their
//! Parquet data is fetched from the object store on first use, then kept in
//! memory as one Arrow batch. A scan applies MVCC at the requested snapshot:
//! rows inserted after it, or deleted at or before it, are filtered out.
//! Vector searches use the segment's DiskANN index when one is built (files
//! fetched into the bounded local [`cache::IndexCache`]) and exact distances
//! otherwise, or when a filter leaves too few rows for a graph search.

mod cache;
mod search;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::filter_record_batch;
use async_trait::async_trait;
use object_store::ObjectStore;
use parking_lot::RwLock;
use quiver_api::{
    ApiError, ApiResult, QueryApi, SegmentSearchResult, StatusCode, VectorSearchRequest,
};
use quiver_segment::{DeleteLogEntry, SegmentIndexMeta, SegmentMeta, read_parquet};
use quiver_types::{IndexId, SegmentId, Timestamp};
use tokio::sync::OnceCell;

pub use cache::{IndexCache, IndexCacheOptions};

#[derive(Debug, thiserror::Error)]
pub enum QueryNodeError {
    #[error("index cache directory {dir}")]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index file {0} is not in the local cache")]
    CacheMiss(String),
    #[error("fetching index files")]
    Fetch(#[from] object_store::Error),
    #[error("DiskANN index")]
    Index(#[from] quiver_index::IndexError),
    #[error("search task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("vector search")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("evaluating the filter")]
    Filter(#[from] datafusion_common::DataFusionError),
}

impl From<QueryNodeError> for ApiError {
    fn from(e: QueryNodeError) -> Self {
        let code = match &e {
            QueryNodeError::Filter(_) => StatusCode::InvalidData,
            QueryNodeError::Index(_) | QueryNodeError::Join(_) | QueryNodeError::Arrow(_) => {
                StatusCode::Internal
            }
            _ => StatusCode::StorageFailure,
        };
        ApiError::from_error(code, &e)
    }
}

pub(crate) struct LoadedSegment {
    pub meta: SegmentMeta,
    /// All rows, user columns plus the insert timestamp last.
    batch: OnceCell<Arc<RecordBatch>>,
}

pub struct QueryNode {
    store: Arc<dyn ObjectStore>,
    segments: RwLock<HashMap<SegmentId, Arc<LoadedSegment>>>,
    indexes: RwLock<HashMap<(SegmentId, IndexId), SegmentIndexMeta>>,
    cache: IndexCache,
}

impl QueryNode {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: IndexCacheOptions,
    ) -> Result<Arc<Self>, QueryNodeError> {
        Ok(Arc::new(QueryNode {
            cache: IndexCache::open(store.clone(), cache)?,
            store,
            segments: RwLock::new(HashMap::new()),
            indexes: RwLock::new(HashMap::new()),
        }))
    }

    pub fn cache(&self) -> &IndexCache {
        &self.cache
    }

    fn segment(&self, segment: SegmentId) -> ApiResult<Arc<LoadedSegment>> {
        self.segments.read().get(&segment).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::Unavailable,
                format!("segment {segment} is not loaded on this query node"),
            )
        })
    }

    pub(crate) async fn data(&self, seg: &LoadedSegment) -> ApiResult<Arc<RecordBatch>> {
        seg.batch
            .get_or_try_init(|| async {
                let batches = read_parquet(self.store.as_ref(), &seg.meta.path)
                    .await
                    .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
                let schema = match batches.first() {
                    Some(b) => b.schema(),
                    None => {
                        return Err(ApiError::new(
                            StatusCode::StorageFailure,
                            format!("segment {} has no data", seg.meta.id),
                        ));
                    }
                };
                let batch = arrow::compute::concat_batches(&schema, &batches)
                    .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
                tracing::debug!(segment = %seg.meta.id, rows = seg.meta.rows, "segment loaded");
                Ok::<_, ApiError>(Arc::new(batch))
            })
            .await
            .cloned()
    }
}

/// Which rows of a segment are visible at `ts`; `None` when all are.
pub(crate) fn visibility(
    meta: &SegmentMeta,
    batch: &RecordBatch,
    ts: Timestamp,
    deletes: &[DeleteLogEntry],
) -> ApiResult<Option<Vec<bool>>> {
    let deleted: HashSet<u32> = deletes
        .iter()
        .filter(|d| d.ts <= ts)
        .map(|d| d.row)
        .collect();
    if meta.max_ts <= ts && deleted.is_empty() {
        return Ok(None);
    }
    let inserted = batch
        .column(batch.num_columns() - 1)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| ApiError::new(StatusCode::Internal, "segment lacks insert timestamps"))?;
    Ok(Some(
        inserted
            .values()
            .iter()
            .enumerate()
            .map(|(i, &t)| t <= ts.0 && !deleted.contains(&(i as u32)))
            .collect(),
    ))
}

pub(crate) fn user_columns(batch: &RecordBatch) -> ApiResult<RecordBatch> {
    let user: Vec<usize> = (0..batch.num_columns() - 1).collect();
    batch
        .project(&user)
        .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))
}

#[async_trait]
impl QueryApi for QueryNode {
    async fn load_segments(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        let mut map = self.segments.write();
        for meta in segments {
            map.entry(meta.id).or_insert_with(|| {
                Arc::new(LoadedSegment {
                    meta,
                    batch: OnceCell::new(),
                })
            });
        }
        Ok(())
    }

    async fn release_segments(&self, segments: Vec<SegmentId>) -> ApiResult<()> {
        let mut map = self.segments.write();
        for id in segments {
            map.remove(&id);
        }
        Ok(())
    }

    async fn load_index(&self, index: SegmentIndexMeta) -> ApiResult<()> {
        self.indexes
            .write()
            .insert((index.segment, index.index), index);
        Ok(())
    }

    async fn release_index(&self, segment: SegmentId, index: IndexId) -> ApiResult<()> {
        if let Some(m) = self.indexes.write().remove(&(segment, index)) {
            self.cache.remove(&m);
        }
        Ok(())
    }

    async fn scan_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
    ) -> ApiResult<Vec<RecordBatch>> {
        let seg = self.segment(segment)?;
        let batch = self.data(&seg).await?;
        let projected = user_columns(&batch)?;
        match visibility(&seg.meta, &batch, ts, deletes)? {
            None => Ok(vec![projected]),
            Some(mask) => {
                let filtered = filter_record_batch(&projected, &BooleanArray::from(mask))
                    .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
                Ok(vec![filtered])
            }
        }
    }

    async fn search_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchResult> {
        let seg = self.segment(segment)?;
        let index = request
            .index
            .and_then(|i| self.indexes.read().get(&(segment, i)).cloned());
        Ok(search::search_segment(self, &seg, index, ts, deletes, request).await?)
    }
}

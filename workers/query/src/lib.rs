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
mod segment_data;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use object_store::ObjectStore;
use parking_lot::{Mutex, RwLock};
use quiver_api::{
    ApiError, ApiResult, QueryApi, SegmentSearchPlan, SegmentSearchResult, StatusCode,
    VectorSearchRequest,
};
use quiver_segment::{DeleteLogEntry, ParquetObject, SegmentIndexMeta, SegmentMeta};
use quiver_types::{IndexId, SegmentId, Timestamp};

pub use cache::{IndexCache, IndexCacheOptions};
use segment_data::SegmentData;

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
    #[error("reading the segment")]
    Segment(#[source] quiver_segment::SegmentError),
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
    /// The segment's rows once fetched (scalars in memory, vectors in a
    /// local file).
    data: Mutex<Option<Arc<SegmentData>>>,
    loading: tokio::sync::Mutex<()>,
}

pub struct QueryNode {
    store: Arc<dyn ObjectStore>,
    segments: RwLock<HashMap<SegmentId, Arc<LoadedSegment>>>,
    indexes: RwLock<HashMap<(SegmentId, IndexId), SegmentIndexMeta>>,
    cache: IndexCache,
    /// Raw vector files of loaded segments (and segments' local copies
    /// while they load).
    vector_dir: PathBuf,
    load_permit: tokio::sync::Semaphore,
    /// When this run started (see [`QueryApi::incarnation`]).
    incarnation: u64,
}

impl QueryNode {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: IndexCacheOptions,
    ) -> Result<Arc<Self>, QueryNodeError> {
        let vector_dir = cache.vector_dir.clone();
        // Files of segments that were compacted or dropped while stopped are
        // not worth tracking down: start from an empty directory.
        if vector_dir.exists() {
            std::fs::remove_dir_all(&vector_dir).map_err(|e| QueryNodeError::Cache {
                dir: vector_dir.clone(),
                source: e,
            })?;
        }
        Ok(Arc::new(QueryNode {
            cache: IndexCache::open(store.clone(), cache)?,
            store,
            segments: RwLock::new(HashMap::new()),
            indexes: RwLock::new(HashMap::new()),
            vector_dir,
            load_permit: tokio::sync::Semaphore::new(1),
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
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

    /// The built index a search request can use on this segment.
    fn index_for(
        &self,
        segment: SegmentId,
        request: &VectorSearchRequest,
    ) -> Option<SegmentIndexMeta> {
        let index = request.index?;
        self.indexes.read().get(&(segment, index)).cloned()
    }

    pub(crate) async fn data(&self, seg: &LoadedSegment) -> ApiResult<Arc<SegmentData>> {
        if let Some(d) = seg.data.lock().clone() {
            return Ok(d);
        }
        let _loading = seg.loading.lock().await;
        if let Some(d) = seg.data.lock().clone() {
            return Ok(d);
        }
        // One segment loads at a time: a node's first query reaches all its
        // segments at once, and each load holds decoded batches.
        let _one_at_a_time = self
            .load_permit
            .acquire()
            .await
            .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
        std::fs::create_dir_all(&self.vector_dir).map_err(|e| {
            ApiError::from(QueryNodeError::Cache {
                dir: self.vector_dir.clone(),
                source: e,
            })
        })?;
        let local = self
            .vector_dir
            .join(format!("{}.parquet.partial", seg.meta.id));
        let object = ParquetObject::download(self.store.as_ref(), &seg.meta.path, &local)
            .await
            .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
        let meta = seg.meta.clone();
        let dir = self.vector_dir.clone();
        let data = tokio::task::spawn_blocking(move || SegmentData::load(&meta, &object, &dir))
            .await
            .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?
            .map_err(ApiError::from)?;
        let data = Arc::new(data);
        release_freed_memory();
        tracing::debug!(segment = %seg.meta.id, rows = seg.meta.rows, "segment loaded");
        *seg.data.lock() = Some(data.clone());
        Ok(data)
    }
}

/// Loading decodes batches that are freed right after; glibc keeps such
/// memory in its arenas, where it would count as the node's RSS
/// indefinitely. Hand it back to the kernel.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has
    // no preconditions and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Which rows of a segment are visible at `ts`; `None` when all are.
pub(crate) fn visibility(
    meta: &SegmentMeta,
    data: &SegmentData,
    ts: Timestamp,
    deletes: &[DeleteLogEntry],
) -> Option<Vec<bool>> {
    let deleted: HashSet<u32> = deletes
        .iter()
        .filter(|d| d.ts <= ts)
        .map(|d| d.row)
        .collect();
    if meta.max_ts <= ts && deleted.is_empty() {
        return None;
    }
    Some(
        data.insert_ts
            .values()
            .iter()
            .enumerate()
            .map(|(i, &t)| t <= ts.0 && !deleted.contains(&(i as u32)))
            .collect(),
    )
}

#[async_trait]
impl QueryApi for QueryNode {
    fn label(&self) -> String {
        "local".to_string()
    }

    async fn incarnation(&self) -> ApiResult<u64> {
        Ok(self.incarnation)
    }

    async fn load_segments(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        let mut map = self.segments.write();
        for meta in segments {
            map.entry(meta.id).or_insert_with(|| {
                Arc::new(LoadedSegment {
                    meta,
                    data: Mutex::new(None),
                    loading: tokio::sync::Mutex::new(()),
                })
            });
        }
        Ok(())
    }

    async fn release_segments(&self, segments: Vec<SegmentId>) -> ApiResult<()> {
        let released: Vec<Arc<LoadedSegment>> = {
            let mut map = self.segments.write();
            segments.iter().filter_map(|id| map.remove(id)).collect()
        };
        for seg in released {
            if let Some(data) = seg.data.lock().take() {
                for (i, c) in data.columns.iter().enumerate() {
                    if matches!(c, segment_data::ColumnData::Vectors(_)) {
                        let path = self.vector_dir.join(format!("{}-{i}.f32", seg.meta.id));
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
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
        projection: Option<&[usize]>,
    ) -> ApiResult<Vec<RecordBatch>> {
        let seg = self.segment(segment)?;
        let data = self.data(&seg).await?;
        let all = data.all_columns();
        let projection = projection.unwrap_or(&all);
        let rows: Option<Vec<u32>> = visibility(&seg.meta, &data, ts, deletes).map(|mask| {
            mask.iter()
                .enumerate()
                .filter(|(_, v)| **v)
                .map(|(i, _)| i as u32)
                .collect()
        });
        Ok(vec![data.project(projection, rows.as_deref())?])
    }

    async fn search_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchResult> {
        let seg = self.segment(segment)?;
        let index = self.index_for(segment, request);
        Ok(search::search_segment(self, &seg, index, ts, deletes, request).await?)
    }

    async fn explain_search(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchPlan> {
        let seg = self.segment(segment)?;
        let has_index = self.index_for(segment, request).is_some();
        let d = search::decide(self, &seg, has_index, ts, deletes, request).await?;
        Ok(SegmentSearchPlan {
            strategy: d.strategy(),
            matching: d.matching as u64,
            rows: d.rows as u64,
        })
    }
}

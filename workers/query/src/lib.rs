//! The query node: serves sealed segments.
//!
//! Segments assigned by the coordinator are registered at once and their
//! Parquet data is fetched from the object store on first use, then kept in
//! memory as Arrow batches. A scan applies MVCC at the requested snapshot:
//! rows inserted after it, or deleted at or before it, are filtered out.
//! (Indexes and a bounded local cache arrive with the DiskANN work.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::filter_record_batch;
use async_trait::async_trait;
use object_store::ObjectStore;
use parking_lot::RwLock;
use quiver_api::{ApiError, ApiResult, QueryApi, StatusCode};
use quiver_segment::{DeleteLogEntry, SegmentMeta, read_parquet};
use quiver_types::{SegmentId, Timestamp};
use tokio::sync::OnceCell;

struct LoadedSegment {
    meta: SegmentMeta,
    batches: OnceCell<Arc<Vec<RecordBatch>>>,
}

pub struct QueryNode {
    store: Arc<dyn ObjectStore>,
    segments: RwLock<HashMap<SegmentId, Arc<LoadedSegment>>>,
}

impl QueryNode {
    pub fn new(store: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(QueryNode {
            store,
            segments: RwLock::new(HashMap::new()),
        })
    }

    async fn data(&self, seg: &LoadedSegment) -> ApiResult<Arc<Vec<RecordBatch>>> {
        seg.batches
            .get_or_try_init(|| async {
                let batches = read_parquet(self.store.as_ref(), &seg.meta.path)
                    .await
                    .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
                tracing::debug!(segment = %seg.meta.id, rows = seg.meta.rows, "segment loaded");
                Ok::<_, ApiError>(Arc::new(batches))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl QueryApi for QueryNode {
    async fn load_segments(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        let mut map = self.segments.write();
        for meta in segments {
            map.entry(meta.id).or_insert_with(|| {
                Arc::new(LoadedSegment {
                    meta,
                    batches: OnceCell::new(),
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

    async fn scan_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
    ) -> ApiResult<Vec<RecordBatch>> {
        let seg = self.segments.read().get(&segment).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::Unavailable,
                format!("segment {segment} is not loaded on this query node"),
            )
        })?;
        let batches = self.data(&seg).await?;
        let deleted: HashSet<u32> = deletes
            .iter()
            .filter(|d| d.ts <= ts)
            .map(|d| d.row)
            .collect();
        let all_visible = seg.meta.max_ts <= ts && deleted.is_empty();
        let mut out = Vec::with_capacity(batches.len());
        let mut offset = 0u32;
        for batch in batches.iter() {
            let user: Vec<usize> = (0..batch.num_columns() - 1).collect();
            let projected = batch
                .project(&user)
                .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
            if all_visible {
                out.push(projected);
            } else {
                let inserted = batch
                    .column(batch.num_columns() - 1)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::Internal, "segment lacks insert timestamps")
                    })?;
                let mask: BooleanArray = inserted
                    .values()
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| Some(t <= ts.0 && !deleted.contains(&(offset + i as u32))))
                    .collect();
                let filtered = filter_record_batch(&projected, &mask)
                    .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
                if filtered.num_rows() > 0 {
                    out.push(filtered);
                }
            }
            offset += batch.num_rows() as u32;
        }
        Ok(out)
    }
}

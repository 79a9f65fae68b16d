//! Bulk loads written straight to sealed segments.
//!
//! A large insert-only statement (a bulk `COPY`, a big `INSERT ... SELECT`)
//! would otherwise be written twice while it is loaded: once to the WAL, and
//! again as a Parquet segment when its shard seals. Here each shard's part
//! becomes a sealed segment at once, and the statement commits with one
//! meta-store batch holding every part's manifest — all parts or none, the
//! same atomicity as a WAL commit, with the data written once. The WAL gets
//! nothing: the manifests are the durable record.
//!
//! Recovery loads sealed segments before replaying the WAL tail, so a WAL
//! record older than a directly sealed segment would be replayed after it
//! (and, say, an old insert of a key would retire the segment's newer row).
//! Each touched shard is therefore flushed first, under its write lock:
//! nothing older than the statement is left in its WAL tail.
//!
//! Small segments made this way are merged by compaction like any other.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use quiver_api::{ApiError, ApiResult, ConflictPolicy, StatusCode, WriteRequest, WriteResult};
use quiver_meta::{keys, put_json_op};
use quiver_segment::{SegmentMeta, segment_path, write_parquet_batches};
use quiver_types::{SegmentId, ShardId};

use crate::StreamingNode;
use crate::channel::WritePlan;
use crate::table_shard::{is_empty, keys_of};

impl StreamingNode {
    /// Whether `request` is a bulk insert worth sealing directly: rows to
    /// insert, nothing to delete or replace, and at least the configured
    /// number of rows.
    pub(crate) fn wants_direct_seal(&self, request: &WriteRequest) -> bool {
        let threshold = self.ctx.options.direct_seal_rows;
        threshold > 0
            && request.delete_keys.is_none()
            && request.on_conflict != ConflictPolicy::Replace
            && request
                .insert
                .as_ref()
                .is_some_and(|b| b.num_rows() >= threshold)
    }

    /// Writes an insert-only request as one sealed segment per shard it
    /// touches, committed by one meta-store batch (see the module comment).
    pub(crate) async fn write_direct(&self, request: &WriteRequest) -> ApiResult<WriteResult> {
        let table = &request.table;
        self.check_current(table).await?;
        let shards = self.table_shards(table);
        let parts = Self::split(&request.insert, &table.schema.primary_key, shards)?;
        let touched: Vec<u32> = (0..parts.len())
            .filter(|&s| !is_empty(&parts[s].0))
            .map(|s| s as u32)
            .collect();
        // Flush locks before write locks, each in ascending shard order: the
        // order TRUNCATE and compaction take them in.
        let (channels, flush_guards, write_guards) = self.lock_table_shards(&touched).await?;
        let mut plans: Vec<(usize, WritePlan)> = Vec::with_capacity(touched.len());
        for (&s, ch) in &channels {
            let plan = ch.plan_write(
                table,
                None,
                parts[s].0.clone(),
                &parts[s].1,
                request.on_conflict,
            )?;
            if plan.insert.is_some() {
                plans.push((s, plan));
            }
        }
        // Everything older than this statement leaves the WAL tail.
        for (s, _) in &plans {
            channels[s]
                .flush_holding_flush_lock(&self.ctx)
                .await
                .map_err(ApiError::from)?;
        }
        let ts = self.ctx.coordinator.allocate_timestamp().await?;
        let mut result = WriteResult {
            ts,
            ..WriteResult::default()
        };
        if plans.is_empty() {
            return Ok(result);
        }
        let first_id = self
            .ctx
            .coordinator
            .allocate_segment_ids(plans.len() as u64)
            .await?;
        let segment_schema = table.schema.segment_schema();
        let writes = plans.iter().enumerate().map(|(i, (s, plan))| {
            let rows = plan.insert.clone().expect("plans keep only inserts");
            let id = SegmentId(first_id.0 + i as u64);
            let path = segment_path(table.id, id);
            let schema = segment_schema.clone();
            let store = self.ctx.store.clone();
            async move {
                let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
                columns.push(Arc::new(UInt64Array::from_value(ts.0, rows.num_rows())));
                let batch = RecordBatch::try_new(schema.clone(), columns)
                    .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
                let bytes = write_parquet_batches(store.as_ref(), &path, schema, vec![batch])
                    .await
                    .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
                Ok::<_, ApiError>(SegmentMeta {
                    id,
                    table: table.id,
                    shard: ShardId(*s as u32),
                    rows: rows.num_rows() as u64,
                    bytes,
                    path,
                    max_ts: ts,
                    delete_logs: Vec::new(),
                })
            }
        });
        let metas = futures::future::try_join_all(writes).await?;
        // The commit point: every part's manifest in one batch.
        let ops = metas
            .iter()
            .map(|m| put_json_op(keys::segment(table.id, m.id), m))
            .collect();
        self.ctx
            .meta
            .batch(ops)
            .await
            .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
        // Placed before the rows become visible, as a flush does: a reader
        // must not find a segment no query node serves.
        self.ctx.segments_sealed(metas.clone()).await;
        for ((s, plan), meta) in plans.into_iter().zip(metas) {
            let ch = &channels[&s];
            let rows = plan.insert.as_ref().expect("plans keep only inserts");
            let keys = keys_of(rows, &table.schema.primary_key);
            let mut data = ch.data.write();
            data.table_mut(table).add_sealed(meta, &keys, Vec::new());
            // Under the data lock, like a logged write's apply.
            ch.advance_tick(ts);
            drop(data);
            result.inserted_rows.extend(plan.inserted_rows);
        }
        result.inserted_rows.sort_unstable();
        drop(write_guards);
        drop(flush_guards);
        tracing::debug!(table = %table.name, rows = result.inserted_rows.len(), ts = %ts, "bulk insert sealed directly");
        Ok(result)
    }
}

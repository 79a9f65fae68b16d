//! Sealing a channel: growing segments become Parquet segments, pending
//! deletes of sealed segments become delete logs, and the meta store records
//! both together with the channel's new WAL checkpoint in one atomic batch.
//!
//! Writers are not blocked while the files are written. A flush freezes what
//! is applied at that moment (the first rows of each growing segment, the
//! pending deletes, the last applied LSN), writes it, and then swaps the
//! frozen rows for the sealed segment. Rows written meanwhile stay growing;
//! deletes that hit frozen rows meanwhile become deletes of the new segment.
//! The checkpoint is the frozen LSN, so records after it are replayed.

use quiver_meta::{MetaOp, keys, put_json_op};
use quiver_segment::{
    DeleteLogEntry, SegmentMeta, delete_log_path, segment_path, write_delete_log,
    write_parquet_batches,
};
use quiver_types::{ShardId, TableId, Timestamp};
use quiver_wal::Lsn;

use crate::channel::Channel;
use crate::{NodeContext, StreamingError};

/// One table's growing rows at the moment of the freeze.
struct FrozenGrowing {
    table: TableId,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
    /// Delete timestamps of the frozen rows at the freeze.
    deleted: Vec<Timestamp>,
}

/// What a flush writes, captured at one instant.
struct Frozen {
    flush_ts: Timestamp,
    checkpoint: Option<Lsn>,
    growing: Vec<FrozenGrowing>,
    /// Sealed segments with deletes not yet in a delete log.
    pending: Vec<(TableId, SegmentMeta, Vec<DeleteLogEntry>)>,
    dropped: Vec<SegmentMeta>,
}

impl Channel {
    /// Flushes the channel without blocking its writers.
    pub async fn flush(&self, ctx: &NodeContext) -> Result<(), StreamingError> {
        let _flush = self.flush_lock.lock().await;
        if !self.is_owned() {
            // Handed over: the new owner seals what is in the WAL.
            return Ok(());
        }
        self.flush_holding_flush_lock(ctx).await
    }

    /// Flushes; the caller holds `flush_lock` (TRUNCATE also holds
    /// `write_lock`, which a flush never needs).
    pub async fn flush_holding_flush_lock(&self, ctx: &NodeContext) -> Result<(), StreamingError> {
        let Some(frozen) = self.freeze() else {
            return Ok(());
        };
        self.seal(ctx, frozen).await
    }

    /// Captures what is applied now; `None` if there is nothing to write.
    fn freeze(&self) -> Option<Frozen> {
        // The tick and the data are read under the same lock as `apply`
        // writes them, so every record at or below `flush_ts` is frozen.
        let data = self.data.read();
        let flush_ts = self.tick();
        let mut growing = Vec::new();
        let mut pending = Vec::new();
        for shard in data.tables.values() {
            if let Some((batches, deleted)) = shard.growing_for_seal() {
                growing.push(FrozenGrowing {
                    table: shard.info.id,
                    schema: shard.segment_schema.clone(),
                    batches,
                    deleted,
                });
            }
            for s in shard.sealed.values() {
                if !s.unflushed.is_empty() {
                    pending.push((shard.info.id, s.meta.clone(), s.unflushed.clone()));
                }
            }
        }
        let checkpoint = data.last_lsn.map(|l| l + 1);
        let moves_checkpoint = checkpoint.is_some_and(|cp| cp != data.checkpoint);
        if growing.is_empty()
            && pending.is_empty()
            && data.dropped_segments.is_empty()
            && !moves_checkpoint
        {
            return None;
        }
        Some(Frozen {
            flush_ts,
            checkpoint,
            growing,
            pending,
            dropped: data.dropped_segments.clone(),
        })
    }

    async fn seal(&self, ctx: &NodeContext, frozen: Frozen) -> Result<(), StreamingError> {
        let Frozen {
            flush_ts,
            checkpoint,
            growing,
            pending,
            dropped,
        } = frozen;
        let mut ops = Vec::new();
        let mut sealed = Vec::new();
        for FrozenGrowing {
            table,
            schema,
            batches,
            deleted,
        } in growing
        {
            // Encoded here, outside the data lock: writers keep going.
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let mut max_ts = Timestamp(0);
            for batch in &batches {
                let inserted = batch
                    .column(batch.num_columns() - 1)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt64Array>()
                    .ok_or_else(|| {
                        arrow::error::ArrowError::SchemaError("missing insert timestamps".into())
                    })?;
                max_ts = max_ts.max(Timestamp(arrow::compute::max(inserted).unwrap_or(0)));
            }
            let id = ctx
                .coordinator
                .allocate_segment_ids(1)
                .await
                .map_err(StreamingError::Coordinator)?;
            let path = segment_path(table, id);
            let bytes =
                write_parquet_batches(ctx.store.as_ref(), &path, schema.clone(), batches).await?;
            let mut meta = SegmentMeta {
                id,
                table,
                shard: ShardId(self.id),
                rows: rows as u64,
                bytes,
                path,
                max_ts,
                delete_logs: Vec::new(),
            };
            let deletes: Vec<DeleteLogEntry> = deleted
                .iter()
                .enumerate()
                .filter(|(_, d)| **d != Timestamp::MAX)
                .map(|(row, d)| DeleteLogEntry {
                    row: row as u32,
                    ts: *d,
                })
                .collect();
            if !deletes.is_empty() {
                let dpath = delete_log_path(table, id, flush_ts);
                write_delete_log(ctx.store.as_ref(), &dpath, &deletes).await?;
                meta.delete_logs.push(dpath);
            }
            ops.push(put_json_op(keys::segment(table, id), &meta));
            sealed.push((table, meta, deleted));
        }
        let mut updated = Vec::new();
        for (table, mut meta, deletes) in pending {
            let dpath = delete_log_path(table, meta.id, flush_ts);
            write_delete_log(ctx.store.as_ref(), &dpath, &deletes).await?;
            meta.delete_logs.push(dpath);
            ops.push(put_json_op(keys::segment(table, meta.id), &meta));
            updated.push((meta, deletes.len()));
        }
        for meta in &dropped {
            ops.push(MetaOp::Delete {
                key: keys::segment(meta.table, meta.id),
            });
        }
        if let Some(cp) = checkpoint {
            ops.push(put_json_op(keys::channel_checkpoint(self.id), &cp));
            ops.push(put_json_op(keys::channel_flushed_ts(self.id), &flush_ts));
        }
        ctx.meta.batch(ops).await?;

        let dropped_told = dropped.is_empty() || ctx.segments_dropped(&dropped).await;
        if !sealed.is_empty() {
            ctx.segments_sealed(sealed.iter().map(|(_, meta, _)| meta.clone()).collect())
                .await;
        }

        {
            let mut data = self.data.write();
            for (table, meta, deleted_at_freeze) in sealed {
                if let Some(shard) = data.tables.get_mut(&table) {
                    shard.seal_prefix(meta, &deleted_at_freeze)?;
                }
            }
            for (meta, flushed) in updated {
                if let Some(st) = data
                    .tables
                    .get_mut(&meta.table)
                    .and_then(|t| t.sealed.get_mut(&meta.id))
                {
                    st.meta = meta;
                    st.unflushed.drain(..flushed.min(st.unflushed.len()));
                }
            }
            if dropped_told {
                data.dropped_segments
                    .retain(|d| !dropped.iter().any(|x| x.id == d.id));
            }
            if let Some(cp) = checkpoint {
                data.checkpoint = cp;
            }
        }
        if let Some(cp) = checkpoint
            && let Err(e) = ctx.wal.truncate(self.id, cp).await
        {
            tracing::warn!(channel = self.id, error = %e, "WAL truncation failed; will retry at next flush");
        }
        tracing::debug!(channel = self.id, flush_ts = %flush_ts, "channel flushed");
        Ok(())
    }
}

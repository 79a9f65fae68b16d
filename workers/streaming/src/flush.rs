//! Sealing a channel: growing segments become Parquet segments, pending
//! deletes of sealed segments become delete logs, and the meta store records
//! both together with the channel's new WAL checkpoint in one atomic batch.

use quiver_meta::{MetaOp, keys, put_json_op};
use quiver_segment::{
    DeleteLogEntry, SegmentMeta, delete_log_path, segment_path, write_delete_log, write_parquet,
};
use quiver_types::{ShardId, TableId};

use crate::channel::Channel;
use crate::{NodeContext, StreamingError};

struct SealedGrowing {
    table: TableId,
    meta: SegmentMeta,
    deletes: Vec<DeleteLogEntry>,
}

impl Channel {
    /// Flushes the channel. Caller holds `write_lock`, so the state is stable.
    pub async fn flush(&self, ctx: &NodeContext) -> Result<(), StreamingError> {
        let flush_ts = self.tick();
        // Copy out what must be written, without holding the lock across I/O.
        let (growing, pending_deletes, dropped, last_lsn) = {
            let data = self.data.read();
            let mut growing = Vec::new();
            let mut pending = Vec::new();
            for shard in data.tables.values() {
                if let Some((batch, deletes)) = shard.growing_for_seal()? {
                    growing.push((shard.info.id, batch, deletes));
                }
                for s in shard.sealed.values() {
                    if !s.unflushed.is_empty() {
                        pending.push((shard.info.id, s.meta.clone(), s.unflushed.clone()));
                    }
                }
            }
            (
                growing,
                pending,
                data.dropped_segments.clone(),
                data.last_lsn,
            )
        };
        let checkpoint = last_lsn.map(|l| l + 1);
        let moves_checkpoint = checkpoint.is_some_and(|cp| cp != self.data.read().checkpoint);
        if growing.is_empty()
            && pending_deletes.is_empty()
            && dropped.is_empty()
            && !moves_checkpoint
        {
            return Ok(());
        }

        let mut ops = Vec::new();
        let mut sealed = Vec::new();
        for (table, batch, deletes) in growing {
            let id = ctx
                .coordinator
                .allocate_segment_ids(1)
                .await
                .map_err(StreamingError::Coordinator)?;
            let path = segment_path(table, id);
            let bytes = write_parquet(ctx.store.as_ref(), &path, &batch).await?;
            let max_ts = quiver_types::Timestamp(
                arrow::compute::max(
                    batch
                        .column(batch.num_columns() - 1)
                        .as_any()
                        .downcast_ref::<arrow::array::UInt64Array>()
                        .ok_or_else(|| {
                            arrow::error::ArrowError::SchemaError(
                                "missing insert timestamps".into(),
                            )
                        })?,
                )
                .unwrap_or(0),
            );
            let mut meta = SegmentMeta {
                id,
                table,
                shard: ShardId(self.id),
                rows: batch.num_rows() as u64,
                bytes,
                path,
                max_ts,
                delete_logs: Vec::new(),
            };
            if !deletes.is_empty() {
                let dpath = delete_log_path(table, id, flush_ts);
                write_delete_log(ctx.store.as_ref(), &dpath, &deletes).await?;
                meta.delete_logs.push(dpath);
            }
            ops.push(put_json_op(keys::segment(table, id), &meta));
            sealed.push(SealedGrowing {
                table,
                meta,
                deletes,
            });
        }
        let mut updated = Vec::new();
        for (table, mut meta, deletes) in pending_deletes {
            let dpath = delete_log_path(table, meta.id, flush_ts);
            write_delete_log(ctx.store.as_ref(), &dpath, &deletes).await?;
            meta.delete_logs.push(dpath);
            ops.push(put_json_op(keys::segment(table, meta.id), &meta));
            updated.push(meta);
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

        if !sealed.is_empty() {
            ctx.coordinator
                .segments_sealed(sealed.iter().map(|s| s.meta.clone()).collect())
                .await
                .map_err(StreamingError::Coordinator)?;
        }

        {
            let mut data = self.data.write();
            for s in sealed {
                if let Some(shard) = data.tables.get_mut(&s.table) {
                    shard.growing_sealed(s.meta, s.deletes);
                }
            }
            for meta in updated {
                if let Some(st) = data
                    .tables
                    .get_mut(&meta.table)
                    .and_then(|t| t.sealed.get_mut(&meta.id))
                {
                    st.meta = meta;
                    st.unflushed.clear();
                }
            }
            data.dropped_segments.clear();
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

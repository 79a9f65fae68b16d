//! Compaction of a shard's sealed segments.
//!
//! A shard owns its sealed segments' deletes and the primary-key index that
//! points into them, so it decides what to compact and swaps the result in;
//! the merge itself (read, leave out deleted rows, write) runs on a data
//! node through the coordinator, with no lock held.
//!
//! What is compacted: segments whose deleted fraction reaches the configured
//! ratio, and undersized segments (under half the seal threshold) when a
//! table has at least two of them in the shard; `VACUUM` takes every segment
//! with deletes and every undersized one. Merged groups stay under twice the
//! seal threshold.
//!
//! Rows deleted more than [`RETENTION`] before the compaction started are
//! left out; later deletes are carried over onto the merged segment, so a
//! reader at a snapshot up to that old still sees exactly what it saw.
//! The swap holds the flush lock and the write lock: the merged segment's
//! manifest (with a delete log of the carried-over deletes) replaces the old
//! manifests in one meta-store batch, the key index is remapped, and the old
//! segments are released a grace period later so running queries finish.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use quiver_api::{ApiResult, CompactionTask, TableInfo};
use quiver_meta::{MetaOp, keys, put_json_op};
use quiver_segment::{DeleteLogEntry, SegmentMeta, delete_log_path, write_delete_log};
use quiver_types::{SegmentId, Timestamp};

use crate::channel::Channel;
use crate::table_shard::{RowLoc, SealedState};
use crate::{NodeContext, StreamingError};

/// How far back a snapshot may be and still see rows compaction removed.
pub const RETENTION: Duration = Duration::from_secs(5);

/// How long replaced segments stay loaded for queries already running.
const RELEASE_GRACE: Duration = Duration::from_secs(10);

struct Plan {
    segments: Vec<SegmentMeta>,
    drop_rows: Vec<Vec<u32>>,
}

impl Channel {
    /// Groups of segments of `table` worth compacting now.
    fn plan_compaction(&self, ctx: &NodeContext, table: &TableInfo, vacuum: bool) -> Vec<Plan> {
        let data = self.data.read();
        let Some(shard) = data.tables.get(&table.id) else {
            return Vec::new();
        };
        let seal_rows = ctx.options.seal_rows as u64;
        let horizon = Timestamp::compose(
            self.tick()
                .physical_ms()
                .saturating_sub(RETENTION.as_millis() as u64),
            0,
        );
        let small = |s: &SealedState| s.meta.rows < seal_rows / 2;
        let droppable = |s: &SealedState| -> Vec<u32> {
            let mut rows: Vec<u32> = s
                .deletes
                .iter()
                .filter(|d| d.ts <= horizon)
                .map(|d| d.row)
                .collect();
            rows.sort_unstable();
            rows.dedup();
            rows
        };
        let smalls = shard.sealed.values().filter(|s| small(s)).count();
        let mut candidates: Vec<(&SealedState, Vec<u32>)> = shard
            .sealed
            .values()
            .filter_map(|s| {
                let drop = droppable(s);
                let ratio = drop.len() as f64 / s.meta.rows.max(1) as f64;
                let wanted = (small(s) && smalls >= 2)
                    || ratio >= ctx.options.compaction_deleted_ratio
                    || (vacuum && (!drop.is_empty() || small(s)));
                wanted.then_some((s, drop))
            })
            .collect();
        // A lone undersized segment without deletes gains nothing.
        if candidates.len() == 1 && candidates[0].1.is_empty() {
            candidates.clear();
        }
        let mut plans: Vec<Plan> = Vec::new();
        let mut current = Plan {
            segments: Vec::new(),
            drop_rows: Vec::new(),
        };
        let mut current_rows = 0u64;
        for (s, drop) in candidates {
            let live = s.meta.rows - drop.len() as u64;
            if !current.segments.is_empty() && current_rows + live > 2 * seal_rows {
                plans.push(std::mem::replace(
                    &mut current,
                    Plan {
                        segments: Vec::new(),
                        drop_rows: Vec::new(),
                    },
                ));
                current_rows = 0;
            }
            current_rows += live;
            current.segments.push(s.meta.clone());
            current.drop_rows.push(drop);
        }
        if !current.segments.is_empty() {
            plans.push(current);
        }
        // A group of one segment with nothing to drop would be a plain copy.
        plans.retain(|p| p.segments.len() > 1 || p.drop_rows.iter().any(|d| !d.is_empty()));
        plans
    }

    /// Compacts `table`'s segments in this shard; returns how many segments
    /// were replaced.
    pub(crate) async fn compact_table(
        &self,
        ctx: &Arc<NodeContext>,
        table: &TableInfo,
        vacuum: bool,
    ) -> ApiResult<usize> {
        let _compaction = self.compaction_lock.lock().await;
        if !self.is_owned() {
            return Ok(0);
        }
        let mut replaced = 0;
        for plan in self.plan_compaction(ctx, table, vacuum) {
            replaced += self.compact_group(ctx, table, plan).await?;
        }
        Ok(replaced)
    }

    async fn compact_group(
        &self,
        ctx: &Arc<NodeContext>,
        table: &TableInfo,
        plan: Plan,
    ) -> ApiResult<usize> {
        let new_id = ctx.coordinator.allocate_segment_ids(1).await?;
        let output = ctx
            .coordinator
            .compact(CompactionTask {
                new_segment: new_id,
                segments: plan.segments.clone(),
                drop_rows: plan.drop_rows,
            })
            .await?;
        let _flush = self.lock_flush().await?;
        let _write = self.lock_write().await?;
        let old: Vec<SegmentId> = plan.segments.iter().map(|s| s.id).collect();
        // Every delete known now (including ones since the merge started),
        // moved onto the merged segment's rows.
        let carried: Option<Vec<DeleteLogEntry>> = {
            let data = self.data.read();
            data.tables.get(&table.id).and_then(|shard| {
                let mut carried = Vec::new();
                for (id, map) in old.iter().zip(&output.row_maps) {
                    let state = shard.sealed.get(id)?;
                    for d in state.deletes.iter() {
                        if let Some(&row) = map.get(d.row as usize)
                            && row != u32::MAX
                        {
                            carried.push(DeleteLogEntry { row, ts: d.ts });
                        }
                    }
                }
                Some(carried)
            })
        };
        let Some(carried) = carried else {
            // A TRUNCATE or DROP removed the inputs meanwhile.
            tracing::info!(table = %table.name, "compaction abandoned: segments are gone");
            return Ok(0);
        };
        let mut new_meta = output.segment.clone();
        if let Some(meta) = new_meta.as_mut()
            && !carried.is_empty()
        {
            let path = delete_log_path(table.id, meta.id, self.tick());
            write_delete_log(ctx.store.as_ref(), &path, &carried)
                .await
                .map_err(StreamingError::from)?;
            meta.delete_logs.push(path);
        }
        let mut ops = Vec::new();
        if let Some(meta) = &new_meta {
            ops.push(put_json_op(keys::segment(table.id, meta.id), meta));
        }
        for id in &old {
            ops.push(MetaOp::Delete {
                key: keys::segment(table.id, *id),
            });
            ops.push(MetaOp::DeletePrefix {
                prefix: keys::segment_indexes(table.id, *id),
            });
        }
        ctx.meta.batch(ops).await.map_err(StreamingError::from)?;
        if let Some(meta) = &new_meta {
            ctx.segments_sealed(vec![meta.clone()]).await;
        }
        {
            let mut data = self.data.write();
            let shard = data.table_mut(table);
            for id in &old {
                shard.sealed.remove(id);
            }
            if let Some(meta) = &new_meta {
                let maps: HashMap<SegmentId, &Vec<u32>> =
                    old.iter().copied().zip(&output.row_maps).collect();
                for loc in shard.pk_index.values_mut() {
                    if let RowLoc::Sealed(seg, row) = *loc
                        && let Some(map) = maps.get(&seg)
                        && let Some(&new_row) = map.get(row as usize)
                    {
                        *loc = RowLoc::Sealed(meta.id, new_row);
                    }
                }
                shard.sealed.insert(
                    meta.id,
                    SealedState {
                        meta: meta.clone(),
                        deletes: Arc::new(carried),
                        unflushed: Vec::new(),
                    },
                );
            }
        }
        tracing::info!(
            table = %table.name,
            shard = self.id,
            replaced = old.len(),
            rows = new_meta.as_ref().map_or(0, |m| m.rows),
            "compaction swapped in"
        );
        let ctx = ctx.clone();
        let released = plan.segments;
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_GRACE).await;
            if let Err(e) = ctx.coordinator.segments_dropped(released.clone()).await {
                tracing::warn!(error = %e.message, "releasing compacted segments failed");
            }
            for meta in &released {
                for path in std::iter::once(&meta.path).chain(&meta.delete_logs) {
                    let path = object_store::path::Path::from(path.as_str());
                    if let Err(e) = ctx.store.delete(&path).await {
                        tracing::warn!(path = %path, error = %e, "could not delete compacted file");
                    }
                }
            }
        });
        Ok(old.len())
    }
}

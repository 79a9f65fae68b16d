//! Rebuilding a channel after a restart: sealed segments from the meta store
//! (their keys and delete logs, for the primary-key index), then every WAL
//! record after the channel's checkpoint.

use std::collections::HashMap;

use quiver_meta::keys;
use quiver_segment::{SegmentMeta, WalRecord, read_delete_log, read_parquet_columns};

use crate::channel::{Channel, ChannelData};
use crate::table_shard::keys_of;
use crate::{NodeContext, StreamingError};

pub(crate) async fn recover_channel(ctx: &NodeContext, id: u32) -> Result<Channel, StreamingError> {
    let tables: HashMap<_, _> = ctx
        .coordinator
        .tables()
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let mut data = ChannelData::default();

    let segments = quiver_meta::scan_json::<SegmentMeta>(ctx.meta.as_ref(), keys::SEGMENTS).await?;
    let mut sealed_count = 0usize;
    for (_, meta) in segments {
        if meta.shard.0 != id {
            continue;
        }
        let Some(info) = tables.get(&meta.table) else {
            continue;
        };
        // Only the key columns are needed to rebuild the primary-key index.
        let batches =
            read_parquet_columns(ctx.store.as_ref(), &meta.path, &info.schema.primary_key).await?;
        let mut key_columns: Vec<usize> = info.schema.primary_key.clone();
        key_columns.sort_unstable();
        // Projected columns come back in file order; map key order onto it.
        let key_positions: Vec<usize> = info
            .schema
            .primary_key
            .iter()
            .map(|k| key_columns.iter().position(|c| c == k).unwrap_or(0))
            .collect();
        let mut keys = Vec::with_capacity(meta.rows as usize);
        for batch in &batches {
            keys.extend(keys_of(batch, &key_positions));
        }
        let mut deletes = Vec::new();
        for log in &meta.delete_logs {
            deletes.extend(read_delete_log(ctx.store.as_ref(), log).await?);
        }
        data.table_mut(info).add_sealed(meta, &keys, deletes);
        sealed_count += 1;
    }

    let checkpoint = quiver_meta::get_json::<u64>(ctx.meta.as_ref(), &keys::channel_checkpoint(id))
        .await?
        .unwrap_or(0);
    let records = ctx.wal.read_from(id, checkpoint).await?;
    let replayed = records.len();
    for (lsn, bytes) in records {
        if lsn < checkpoint {
            continue;
        }
        let record = WalRecord::decode(&bytes)?;
        if let Some(info) = tables.get(&record.table) {
            data.apply(info, &record)?;
        }
        data.last_lsn = Some(lsn);
    }
    let tick = ctx
        .coordinator
        .allocate_timestamp()
        .await
        .map_err(StreamingError::Coordinator)?;
    tracing::info!(
        channel = id,
        sealed_segments = sealed_count,
        checkpoint,
        replayed,
        growing_rows = data.growing_rows(),
        "channel recovered"
    );
    Ok(Channel::new(id, data, tick))
}

//! Rebuilding the channels after a restart: sealed segments from the meta
//! store (their keys and delete logs, for the primary-key index), then every
//! WAL record after each channel's checkpoint.
//!
//! A statement (or transaction) that wrote several shards or tables has one
//! record per (shard, table), each naming the shard of every record. Such a record is replayed only if every
//! participant's part is durable: present in that channel's log tail, or
//! already sealed (the channel's flushed timestamp is past the statement).
//! Incomplete statements (the process died between the appends; they were
//! never acknowledged) are recorded as aborted so they stay dropped.

use std::collections::{HashMap, HashSet};

use quiver_api::TableInfo;
use quiver_meta::{MetaOp, keys};
use quiver_segment::{SegmentMeta, WalRecord, read_delete_log, read_parquet_columns};
use quiver_types::{TableId, Timestamp};
use quiver_wal::Lsn;

use crate::channel::{Channel, ChannelData};
use crate::prepared::decide_outcome;
use crate::table_shard::keys_of;
use crate::{NodeContext, StreamingError};

/// What one channel's recovery read, before any WAL record is applied.
struct ChannelLog {
    data: ChannelData,
    records: Vec<(Lsn, WalRecord)>,
    flushed_ts: Timestamp,
    sealed_segments: usize,
}

async fn load_sealed(
    ctx: &NodeContext,
    data: &mut ChannelData,
    info: &TableInfo,
    meta: SegmentMeta,
) -> Result<(), StreamingError> {
    // Only the key columns are needed to rebuild the primary-key index;
    // they come back in file order, so map key order onto it.
    let batches = read_parquet_columns(&ctx.store, &meta.path, &info.schema.primary_key).await?;
    let mut in_file_order = info.schema.primary_key.clone();
    in_file_order.sort_unstable();
    let key_positions: Vec<usize> = info
        .schema
        .primary_key
        .iter()
        .map(|k| in_file_order.iter().position(|c| c == k).unwrap_or(0))
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
    Ok(())
}

async fn read_channel(
    ctx: &NodeContext,
    id: u32,
    tables: &HashMap<TableId, TableInfo>,
    segments: &[SegmentMeta],
) -> Result<ChannelLog, StreamingError> {
    let mut data = ChannelData::default();
    let mut sealed_segments = 0;
    for meta in segments.iter().filter(|m| m.shard.0 == id) {
        if let Some(info) = tables.get(&meta.table) {
            load_sealed(ctx, &mut data, info, meta.clone()).await?;
            sealed_segments += 1;
        }
    }
    let (checkpoint, records, flushed_ts) = read_tail(ctx, id).await?;
    data.checkpoint = checkpoint;
    Ok(ChannelLog {
        data,
        records,
        flushed_ts,
        sealed_segments,
    })
}

/// A channel's checkpoint, the records after it, and its flushed timestamp.
async fn read_tail(
    ctx: &NodeContext,
    id: u32,
) -> Result<(Lsn, Vec<(Lsn, WalRecord)>, Timestamp), StreamingError> {
    let checkpoint = quiver_meta::get_json::<Lsn>(ctx.meta.as_ref(), &keys::channel_checkpoint(id))
        .await?
        .unwrap_or(0);
    let flushed_ts =
        quiver_meta::get_json::<Timestamp>(ctx.meta.as_ref(), &keys::channel_flushed_ts(id))
            .await?
            .unwrap_or(Timestamp::ZERO);
    let mut records = Vec::new();
    for (lsn, bytes) in ctx.wal.read_from(id, checkpoint).await? {
        if lsn >= checkpoint {
            records.push((lsn, WalRecord::decode(&bytes)?));
        }
    }
    Ok((checkpoint, records, flushed_ts))
}

/// Recovers the channels `ids` (a node taking over shards; all of them at
/// a standalone start).
pub(crate) async fn recover_channels(
    ctx: &NodeContext,
    ids: &[u32],
) -> Result<Vec<Channel>, StreamingError> {
    let tables: HashMap<TableId, TableInfo> = ctx
        .coordinator
        .tables()
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let segments: Vec<SegmentMeta> =
        quiver_meta::scan_json::<SegmentMeta>(ctx.meta.as_ref(), keys::SEGMENTS)
            .await?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
    let mut aborted: HashSet<String> = ctx
        .meta
        .scan_prefix(keys::ABORTED_STATEMENTS)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();

    let mut logs = Vec::new();
    for &id in ids {
        logs.push((id, read_channel(ctx, id, &tables, &segments).await?));
    }
    // Records per commit timestamp in each participant's tail, and each
    // participant's flushed timestamp: the recovered channels', and those
    // of other channels that statements here name (read, never written).
    let mut in_tail: HashMap<u32, HashMap<Timestamp, usize>> = HashMap::new();
    let mut flushed: HashMap<u32, Timestamp> = HashMap::new();
    let count_tail = |records: &[(Lsn, WalRecord)]| {
        let mut counts = HashMap::new();
        for (_, r) in records {
            *counts.entry(r.ts).or_insert(0) += 1;
        }
        counts
    };
    for (id, log) in &logs {
        in_tail.insert(*id, count_tail(&log.records));
        flushed.insert(*id, log.flushed_ts);
    }
    let mut foreign: Vec<u32> = logs
        .iter()
        .flat_map(|(_, l)| l.records.iter())
        .filter(|(_, r)| !r.decided)
        .flat_map(|(_, r)| r.participants.iter().copied())
        .filter(|p| !in_tail.contains_key(p) && *p < ctx.wal.channel_count())
        .collect();
    foreign.sort_unstable();
    foreign.dedup();
    for id in foreign {
        let (_, records, flushed_ts) = read_tail(ctx, id).await?;
        in_tail.insert(id, count_tail(&records));
        flushed.insert(id, flushed_ts);
    }
    // A channel appears in `participants` once per record it holds (a
    // transaction can write several tables on one shard).
    let durable_everywhere = |record: &WalRecord| {
        record.participants.iter().all(|&p| {
            let expected = record.participants.iter().filter(|&&q| q == p).count();
            in_tail.get(&p).is_some_and(|tail| {
                tail.get(&record.ts).copied().unwrap_or(0) >= expected
                    || flushed.get(&p).is_some_and(|&f| f >= record.ts)
            })
        })
    };
    // Statements spanning several nodes: their outcome key decides (a
    // logged part with no outcome yet was never acknowledged: abort it).
    let mut outcomes: HashMap<Timestamp, bool> = HashMap::new();
    for (_, log) in &logs {
        for (_, record) in log.records.iter().filter(|(_, r)| r.decided) {
            if let std::collections::hash_map::Entry::Vacant(slot) = outcomes.entry(record.ts) {
                let participants = &record.participants;
                slot.insert(
                    decide_outcome(ctx.meta.as_ref(), record.ts, false, participants).await?,
                );
            }
        }
    }

    let mut newly_aborted = Vec::new();
    let tick = ctx
        .coordinator
        .allocate_timestamp()
        .await
        .map_err(StreamingError::Coordinator)?;
    let mut channels = Vec::with_capacity(logs.len());
    for (id, log) in logs {
        let ChannelLog {
            mut data,
            records,
            sealed_segments,
            ..
        } = log;
        let (mut replayed, mut skipped) = (0usize, 0usize);
        for (lsn, record) in &records {
            data.last_lsn = Some(*lsn);
            let key = keys::aborted_statement(record.ts);
            if aborted.contains(&key) {
                skipped += 1;
                continue;
            }
            if record.decided {
                if !outcomes.get(&record.ts).copied().unwrap_or(false) {
                    skipped += 1;
                    continue;
                }
            } else if record.participants.len() > 1 && !durable_everywhere(record) {
                aborted.insert(key.clone());
                newly_aborted.push(MetaOp::Put {
                    key,
                    value: Vec::new(),
                });
                skipped += 1;
                continue;
            }
            if let Some(info) = tables.get(&record.table) {
                data.apply(info, record)?;
                replayed += 1;
            }
        }
        tracing::info!(
            channel = id,
            sealed_segments,
            checkpoint = data.checkpoint,
            replayed,
            skipped_incomplete = skipped,
            growing_rows = data.growing_rows(),
            "channel recovered"
        );
        channels.push(Channel::new(id, data, tick));
    }
    if !newly_aborted.is_empty() {
        tracing::warn!(
            statements = newly_aborted.len(),
            "dropped multi-shard statements that were not durable on every shard (never acknowledged)"
        );
        ctx.meta.batch(newly_aborted).await?;
    }
    Ok(channels)
}

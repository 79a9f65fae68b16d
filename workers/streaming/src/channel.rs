use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use parking_lot::RwLock;
use quiver_api::{ApiError, ApiResult, ConflictPolicy, ShardSnapshot, StatusCode, TableInfo};
use quiver_segment::{WalRecord, WalRecordKind};
use quiver_types::{PrimaryKey, TableId, Timestamp};
use quiver_wal::Lsn;

use crate::table_shard::{TableShard, key_only_columns, keys_of};
use crate::{NodeContext, StreamingError};

/// The error for a call about a shard this node does not own (any more):
/// nothing ran, so the caller may look up the owner and send it there.
pub fn not_owned(shard: u32) -> ApiError {
    ApiError::new(
        StatusCode::NotOwner,
        format!("shard {shard} is not owned by this streaming node"),
    )
}

/// One shard: its WAL channel and the tables' in-memory state.
pub(crate) struct Channel {
    pub id: u32,
    /// Serialises writers (held across the WAL append; a change prepared
    /// for a commit spanning several streaming nodes holds it between calls,
    /// hence shared).
    pub write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Serialises flushes; taken before `write_lock` when both are needed.
    pub flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set (under `flush_lock` and `write_lock`) when this node hands the
    /// shard to another: whoever takes a lock afterwards must not touch the
    /// shard's WAL or manifests any more.
    released: AtomicBool,
    /// A background flush is scheduled or running.
    pub flush_pending: std::sync::atomic::AtomicBool,
    /// Serialises compactions (background and `VACUUM`); taken first.
    pub compaction_lock: tokio::sync::Mutex<()>,
    pub data: RwLock<ChannelData>,
    /// Everything with a timestamp ≤ tick has been applied.
    tick: AtomicU64,
}

#[derive(Default)]
pub(crate) struct ChannelData {
    pub tables: HashMap<TableId, TableShard>,
    /// LSN of the last record applied (or deliberately skipped).
    pub last_lsn: Option<Lsn>,
    /// The WAL position recorded in the meta store: replay starts here.
    pub checkpoint: Lsn,
    /// Sealed segments removed by TRUNCATE whose manifests the next flush deletes.
    pub dropped_segments: Vec<quiver_segment::SegmentMeta>,
}

/// A write checked against the shard's keys, ready to be logged.
pub(crate) struct WritePlan {
    pub delete_keys: Option<RecordBatch>,
    pub insert: Option<RecordBatch>,
    pub deleted_existing: u64,
    /// Indexes into the original request batch.
    pub inserted_rows: Vec<u32>,
}

impl ChannelData {
    /// Rows in growing segments, all tables (what the seal threshold counts).
    pub fn growing_rows(&self) -> usize {
        self.tables.values().map(|t| t.growing_rows as usize).sum()
    }

    pub fn table_mut(&mut self, info: &TableInfo) -> &mut TableShard {
        self.tables
            .entry(info.id)
            .or_insert_with(|| TableShard::new(info.clone()))
    }

    /// Applies a logged record (live writes and WAL replay share this).
    pub fn apply(&mut self, info: &TableInfo, record: &WalRecord) -> Result<(), StreamingError> {
        let shard = self.table_mut(info);
        let mut dropped = Vec::new();
        match &record.kind {
            WalRecordKind::Truncate => {
                dropped = shard.clear();
            }
            WalRecordKind::Mutate {
                delete_keys,
                insert,
            } => {
                if let Some(keys) = delete_keys {
                    for key in keys_of(keys, &key_only_columns(info)) {
                        shard.delete(&key, record.ts);
                    }
                }
                if let Some(rows) = insert {
                    // An inserted key that is live gets replaced: this is how
                    // `ConflictPolicy::Replace` (upsert) takes effect, and it
                    // keeps keys unique under replay.
                    for key in keys_of(rows, &info.schema.primary_key) {
                        shard.delete(&key, record.ts);
                    }
                    shard.insert(rows, record.ts)?;
                }
            }
        }
        self.dropped_segments.extend(dropped);
        Ok(())
    }
}

impl Channel {
    pub fn new(id: u32, data: ChannelData, tick: Timestamp) -> Self {
        Channel {
            id,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            flush_lock: Arc::new(tokio::sync::Mutex::new(())),
            released: AtomicBool::new(false),
            flush_pending: std::sync::atomic::AtomicBool::new(false),
            compaction_lock: tokio::sync::Mutex::new(()),
            data: RwLock::new(data),
            tick: AtomicU64::new(tick.0),
        }
    }

    /// Whether this node still owns the shard (see `released`).
    pub fn is_owned(&self) -> bool {
        !self.released.load(Ordering::Acquire)
    }

    /// Marks the shard handed over. Caller holds `flush_lock` and `write_lock`.
    pub fn mark_released(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Fails as [`not_owned`] once the shard was handed over.
    pub fn check_owned(&self) -> ApiResult<()> {
        if self.is_owned() {
            Ok(())
        } else {
            Err(not_owned(self.id))
        }
    }

    /// Takes `write_lock` of a shard this node still owns.
    pub async fn lock_write(&self) -> ApiResult<tokio::sync::OwnedMutexGuard<()>> {
        let guard = self.write_lock.clone().lock_owned().await;
        self.check_owned()?;
        Ok(guard)
    }

    /// Takes `flush_lock` of a shard this node still owns.
    pub async fn lock_flush(&self) -> ApiResult<tokio::sync::OwnedMutexGuard<()>> {
        let guard = self.flush_lock.clone().lock_owned().await;
        self.check_owned()?;
        Ok(guard)
    }

    pub fn tick(&self) -> Timestamp {
        Timestamp(self.tick.load(Ordering::Acquire))
    }

    /// Waits until everything below `ts` is applied and moves the tick
    /// there: a write holding the lock finishes applying first, and writes
    /// after it take a newer timestamp than `ts`.
    pub async fn wait_applied(&self, ts: Timestamp) {
        if self.tick() < ts {
            let _guard = self.write_lock.lock().await;
            if self.is_owned() {
                self.advance_tick(ts);
            }
        }
    }

    pub fn advance_tick(&self, ts: Timestamp) {
        self.tick.fetch_max(ts.0, Ordering::AcqRel);
    }

    /// Checks a write against the live keys. Caller holds `write_lock`.
    pub fn plan_write(
        &self,
        info: &TableInfo,
        delete_keys: Option<RecordBatch>,
        insert: Option<RecordBatch>,
        original_rows: &[u32],
        policy: ConflictPolicy,
    ) -> ApiResult<WritePlan> {
        let data = self.data.read();
        let shard = data.tables.get(&info.id);
        let exists = |k: &PrimaryKey| shard.is_some_and(|s| s.contains(k));
        let mut deleting: HashSet<PrimaryKey> = HashSet::new();
        let mut deleted_existing = 0u64;
        if let Some(keys) = &delete_keys {
            for key in keys_of(keys, &key_only_columns(info)) {
                if exists(&key) && deleting.insert(key) {
                    deleted_existing += 1;
                }
            }
        }
        let mut keep: Vec<u32> = Vec::new();
        if let Some(rows) = &insert {
            let mut seen: HashSet<PrimaryKey> = HashSet::new();
            for (i, key) in keys_of(rows, &info.schema.primary_key)
                .into_iter()
                .enumerate()
            {
                let live = exists(&key) && !deleting.contains(&key);
                if !seen.insert(key.clone()) {
                    match policy {
                        ConflictPolicy::Skip => continue,
                        _ => {
                            return Err(ApiError::new(
                                StatusCode::UniqueViolation,
                                format!(
                                    "duplicate key value violates unique constraint \"{}_pkey\"",
                                    info.name
                                ),
                            ));
                        }
                    }
                }
                if live {
                    match policy {
                        ConflictPolicy::Error => {
                            return Err(ApiError::new(
                                StatusCode::UniqueViolation,
                                format!(
                                    "duplicate key value violates unique constraint \"{}_pkey\"",
                                    info.name
                                ),
                            ));
                        }
                        ConflictPolicy::Skip => continue,
                        ConflictPolicy::Replace => deleted_existing += 1,
                    }
                }
                keep.push(i as u32);
            }
        }
        let insert = match insert {
            Some(rows) if keep.len() == rows.num_rows() => Some(rows),
            Some(_) if keep.is_empty() => None,
            Some(rows) => Some(
                take_record_batch(&rows, &UInt32Array::from(keep.clone()))
                    .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?,
            ),
            None => None,
        };
        let delete_keys = if deleting.is_empty() {
            None
        } else {
            delete_keys
        };
        Ok(WritePlan {
            delete_keys,
            insert,
            deleted_existing,
            inserted_rows: keep.iter().map(|&i| original_rows[i as usize]).collect(),
        })
    }

    /// The WAL record of a planned write, or `None` if it changes nothing.
    pub fn record_for(
        info: &TableInfo,
        plan: WritePlan,
        ts: Timestamp,
        participants: &[u32],
    ) -> Option<WalRecord> {
        if plan.delete_keys.is_none() && plan.insert.is_none() {
            return None;
        }
        Some(WalRecord {
            table: info.id,
            ts,
            kind: WalRecordKind::Mutate {
                delete_keys: plan.delete_keys,
                insert: plan.insert,
            },
            participants: participants.to_vec(),
            decided: false,
        })
    }

    /// Appends records durably and in order, without applying them; returns
    /// the LSN of the first. Caller holds `write_lock`.
    pub async fn append(
        &self,
        ctx: &NodeContext,
        records: &[&WalRecord],
    ) -> Result<Lsn, StreamingError> {
        let bytes = records
            .iter()
            .map(|r| r.encode())
            .collect::<Result<Vec<_>, _>>()?;
        // Abandoned meanwhile (owner key lost): another node may write the
        // channel now.
        if !self.is_owned() {
            return Err(StreamingError::Coordinator(not_owned(self.id)));
        }
        Ok(ctx.wal.append(self.id, bytes).await?)
    }

    /// Applies records (of one commit timestamp) that are durable from
    /// `first_lsn` on, all under one data lock, so no snapshot sees some of
    /// them without the others. Caller holds `write_lock`.
    pub fn apply_logged(
        &self,
        records: &[(&TableInfo, &WalRecord)],
        first_lsn: Lsn,
    ) -> Result<(), StreamingError> {
        let mut data = self.data.write();
        for (i, (info, record)) in records.iter().enumerate() {
            data.apply(info, record)?;
            data.last_lsn = Some(first_lsn + i as u64);
        }
        // Under the data lock, so a flush freezing the data sees a tick at
        // least as new as every record it seals (recovery relies on it).
        if let Some(ts) = records.iter().map(|(_, r)| r.ts).max() {
            self.advance_tick(ts);
        }
        drop(data);
        Ok(())
    }

    /// Whether a live row has this primary key (at the latest state).
    pub fn contains_key(&self, info: &TableInfo, key: &quiver_types::PrimaryKey) -> bool {
        self.data
            .read()
            .tables
            .get(&info.id)
            .is_some_and(|t| t.contains(key))
    }

    /// Whether the growing segments reached the seal threshold.
    pub fn is_full(&self, ctx: &NodeContext) -> bool {
        self.data.read().growing_rows() >= ctx.options.seal_rows
    }

    pub fn snapshot(&self, info: &TableInfo, ts: Timestamp) -> ApiResult<ShardSnapshot> {
        let data = self.data.read();
        let Some(shard) = data.tables.get(&info.id) else {
            return Ok(ShardSnapshot {
                growing: Vec::new(),
                sealed: Vec::new(),
            });
        };
        let (growing, sealed) = shard
            .snapshot(ts)
            .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
        Ok(ShardSnapshot { growing, sealed })
    }
}

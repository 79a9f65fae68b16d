//! The streaming node: owner of shards.
//!
//! Each shard is one WAL channel. A write is validated against the shard's
//! primary-key index, stamped by the coordinator's timestamp oracle, appended
//! durably to the WAL, and only then applied to the in-memory growing segment
//! and acknowledged. Growing segments are searchable at once (MVCC by commit
//! timestamp). At a row threshold, or on `CHECKPOINT`, a channel is flushed:
//! its growing segments become Parquet segments in the object store, recorded
//! in the meta store together with the channel's new WAL checkpoint, and handed
//! to query nodes. After a restart the node reloads sealed segment keys and
//! replays the WAL from the checkpoint.
//!
//! Each shard also acts as the delegator for its sealed segments: it knows
//! their deletes and answers, per snapshot, which segments a read must visit.

mod channel;
mod compaction;
mod direct_seal;
mod flush;
pub mod ownership;
mod prepared;
mod recovery;
pub mod router;
mod shards;
mod table_shard;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use async_trait::async_trait;
use object_store::ObjectStore;
use quiver_api::{
    ApiError, ApiResult, CoordinatorApi, ShardSnapshot, StatusCode, StreamingApi, TableInfo,
    WriteRequest, WriteResult,
};
use quiver_meta::{MetaStore, keys};
use quiver_segment::{SegmentError, WalRecord, WalRecordKind};
use quiver_types::{ShardId, Timestamp, shard_of};
use quiver_wal::{Lsn, Wal, WalError};
use tokio::sync::OwnedMutexGuard;

use channel::{Channel, WritePlan, not_owned};
use shards::ShardSlots;
use table_shard::{is_empty, key_only_columns, keys_of};

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("WAL failed")]
    Wal(#[from] WalError),
    #[error("meta store failed")]
    Meta(#[from] quiver_meta::MetaError),
    #[error("segment storage failed")]
    Segment(#[from] SegmentError),
    #[error("Arrow error")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("coordinator call failed: {0}")]
    Coordinator(ApiError),
    #[error("the owner key of shard {0} could not be renewed; another node may own the shard")]
    OwnershipLost(u32),
}

impl From<StreamingError> for ApiError {
    fn from(e: StreamingError) -> Self {
        match e {
            StreamingError::Coordinator(inner) => inner,
            other => ApiError::from_error(StatusCode::StorageFailure, &other),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StreamingOptions {
    /// Rows a channel's growing segments may hold before it is flushed.
    pub seal_rows: usize,
    /// How often idle shards advance their time tick.
    pub tick_interval: Duration,
    /// How often shards look for segments to compact (zero: only `VACUUM`).
    pub compaction_interval: Duration,
    /// Fraction of deleted rows at which a segment is rewritten.
    pub compaction_deleted_ratio: f64,
    /// Insert-only statements of at least this many rows are written
    /// straight to sealed segments instead of the WAL (zero: never).
    pub direct_seal_rows: usize,
}

/// Cheap to clone (shared channels and context): a clone runs a change
/// in a task of its own, see [`detached`].
#[derive(Clone)]
pub struct StreamingNode {
    shards: Arc<ShardSlots>,
    prepared: Arc<prepared::Registry>,
    ctx: Arc<NodeContext>,
}

/// What every channel needs to flush and recover.
pub(crate) struct NodeContext {
    pub wal: Arc<dyn Wal>,
    pub meta: Arc<dyn MetaStore>,
    pub store: Arc<dyn ObjectStore>,
    pub coordinator: Arc<dyn CoordinatorApi>,
    pub options: StreamingOptions,
    /// The shards are shared with other nodes, which may recover them one
    /// at a time: a statement over several shards is then decided by its
    /// outcome key, not by which of its parts are durable (a shard
    /// recovered and flushed before another would make the part missing
    /// from its log look sealed).
    pub shared: bool,
}

impl NodeContext {
    /// Tells the coordinator about segments already durable in the meta
    /// store (sealed, or replaced by compaction). Never fails: the caller
    /// must go on to swap its in-memory state, or it would seal the same
    /// rows again. A coordinator that starts later places every segment of
    /// the meta store anyway, so giving up only delays serving (reads of
    /// the segment fail with 08006 until then), never loses or duplicates
    /// rows.
    pub(crate) async fn segments_sealed(&self, segments: Vec<quiver_segment::SegmentMeta>) {
        let told = self
            .tell_coordinator("sealed segments", || {
                self.coordinator.segments_sealed(segments.clone())
            })
            .await;
        if !told {
            tracing::error!(
                "the coordinator did not take sealed segments; they are placed when a coordinator starts"
            );
        }
    }

    /// Tells the coordinator that segments left the manifest (TRUNCATE);
    /// `false` when it could not be told, so the caller keeps them to tell
    /// again at the next flush. Like [`Self::segments_sealed`], never fails
    /// the flush whose meta batch already committed.
    pub(crate) async fn segments_dropped(&self, segments: &[quiver_segment::SegmentMeta]) -> bool {
        self.tell_coordinator("dropped segments", || {
            self.coordinator.segments_dropped(segments.to_vec())
        })
        .await
    }

    /// Retries a call telling the coordinator about a committed change
    /// while it fails (a standby taking over, its meta store briefly
    /// down), for [`COORDINATOR_RETRY`].
    async fn tell_coordinator<F, Fut>(&self, what: &str, call: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ApiResult<()>>,
    {
        let deadline = std::time::Instant::now() + COORDINATOR_RETRY;
        loop {
            match call().await {
                Ok(()) => return true,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e.message, "telling the coordinator about {what} failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e.message, "telling the coordinator about {what} failed");
                    return false;
                }
            }
        }
    }
}

/// How long a seal waits for an unreachable coordinator (a standby takes
/// over within a few seconds).
const COORDINATOR_RETRY: Duration = Duration::from_secs(30);

/// One shard's records of a commit, durable from the LSN on.
type LoggedShard<'a> = (usize, Vec<(&'a TableInfo, &'a WalRecord)>, Lsn);

/// A write checked and locked on every shard it touches, not yet logged.
struct LockedWrite {
    /// The touched shards, ascending, with their write locks.
    channels: BTreeMap<usize, Arc<Channel>>,
    guards: Vec<OwnedMutexGuard<()>>,
    /// (request, shard, plan) for every part that changes something.
    plans: Vec<(usize, usize, WritePlan)>,
}

impl StreamingNode {
    /// Recovers every channel of the WAL (sealed segments from the meta store,
    /// then the WAL tail) and starts the time ticker: the node owns every
    /// shard, as in standalone mode.
    pub async fn open(
        wal: Arc<dyn Wal>,
        meta: Arc<dyn MetaStore>,
        store: Arc<dyn ObjectStore>,
        coordinator: Arc<dyn CoordinatorApi>,
        options: StreamingOptions,
    ) -> Result<Arc<Self>, StreamingError> {
        let node = Self::with_context(NodeContext {
            wal,
            meta,
            store,
            coordinator,
            options,
            shared: false,
        });
        let all: Vec<u32> = (0..node.ctx.wal.channel_count()).collect();
        node.acquire(&all).await?;
        Ok(node)
    }

    /// A node that owns no shard yet: [`Self::acquire`] gives it shards (a
    /// cluster's streaming nodes share the shards out, see [`ownership`]).
    pub fn open_unowned(
        wal: Arc<dyn Wal>,
        meta: Arc<dyn MetaStore>,
        store: Arc<dyn ObjectStore>,
        coordinator: Arc<dyn CoordinatorApi>,
        options: StreamingOptions,
    ) -> Arc<Self> {
        Self::with_context(NodeContext {
            wal,
            meta,
            store,
            coordinator,
            options,
            shared: true,
        })
    }

    fn with_context(ctx: NodeContext) -> Arc<Self> {
        let count = ctx.wal.channel_count() as usize;
        let ctx = Arc::new(ctx);
        let node = Arc::new(StreamingNode {
            shards: Arc::new(ShardSlots::new(count)),
            prepared: Arc::new(prepared::Registry::default()),
            ctx,
        });
        node.clone().spawn_ticker();
        node.clone().spawn_compactor();
        node
    }

    /// Takes over shards: recovers each (sealed segments, then its WAL tail
    /// from the checkpoint) and serves it from then on. The caller makes
    /// sure no other node serves them (a claim in the meta store).
    pub async fn acquire(&self, shards: &[u32]) -> Result<(), StreamingError> {
        let shards: Vec<u32> = shards
            .iter()
            .copied()
            .filter(|&s| !self.shards.owns(s))
            .collect();
        if shards.is_empty() {
            return Ok(());
        }
        for channel in recovery::recover_channels(&self.ctx, &shards).await? {
            self.shards.install(channel);
        }
        Ok(())
    }

    /// Hands a shard over: waits for its writers, flushes it (so the next
    /// owner replays little), and stops serving it. A prepared commit
    /// holding the shard finishes first.
    pub async fn release(&self, shard: u32) -> ApiResult<()> {
        let Some(ch) = self.shards.get_opt(shard as usize) else {
            return Ok(());
        };
        let _compaction = ch.compaction_lock.lock().await;
        let _flush = ch.flush_lock.clone().lock_owned().await;
        if let Err(e) = ch.flush_holding_flush_lock(&self.ctx).await {
            // The next owner replays the WAL instead.
            tracing::warn!(shard, error = %format!("{e:#}"), "flush before handing a shard over failed");
        }
        let _write = ch.write_lock.clone().lock_owned().await;
        ch.mark_released();
        self.shards.remove(shard as usize);
        tracing::info!(shard, "shard handed over");
        Ok(())
    }

    /// Stops serving a shard at once, without waiting for anything: its
    /// owner key could not be renewed, so another node may own it already.
    pub fn abandon(&self, shard: u32) {
        if let Some(ch) = self.shards.get_opt(shard as usize) {
            ch.mark_released();
            self.shards.remove(shard as usize);
            tracing::error!(shard, "shard abandoned: its owner key was lost");
        }
    }

    /// The shards this node serves now, ascending.
    pub fn owned_shard_ids(&self) -> Vec<u32> {
        self.shards.owned().iter().map(|c| c.id).collect()
    }

    /// How many shards (WAL channels) the cluster has.
    pub fn shard_count(&self) -> usize {
        self.shards.count()
    }

    /// Advances idle channels' time ticks so readers at "latest" never wait
    /// on a quiet shard (Milvus-style time ticks).
    fn spawn_ticker(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let interval = self.ctx.options.tick_interval;
        drop(self);
        tokio::spawn(async move {
            // Failures in a row: a coordinator that is down for a while is
            // reported once a second or so, not at every tick.
            let mut failures = 0u64;
            loop {
                tokio::time::sleep(interval).await;
                let Some(node) = weak.upgrade() else { return };
                let owned = node.shards.owned();
                if owned.is_empty() {
                    continue;
                }
                // One timestamp for every idle shard: a write holds its
                // shard's lock from taking its timestamp until it is applied,
                // so a shard whose lock is free has nothing pending below it.
                match node.ctx.coordinator.allocate_timestamp().await {
                    Ok(ts) => {
                        if failures > 0 {
                            tracing::info!(failures, "time ticks advance again");
                            failures = 0;
                        }
                        for ch in &owned {
                            if let Ok(_guard) = ch.write_lock.try_lock() {
                                ch.advance_tick(ts);
                            }
                        }
                    }
                    Err(e) => {
                        if failures.is_multiple_of(20) {
                            tracing::warn!(error = %e, failures, "time tick failed");
                        }
                        failures += 1;
                    }
                }
            }
        });
    }

    /// Compacts every table's segments on every owned shard, one at a time.
    async fn compact_all(&self, only: Option<&TableInfo>, vacuum: bool) -> ApiResult<usize> {
        let tables = match only {
            Some(t) => vec![t.clone()],
            None => self.ctx.coordinator.tables(),
        };
        let mut replaced = 0;
        for ch in self.shards.owned() {
            for table in &tables {
                replaced += ch.compact_table(&self.ctx, table, vacuum).await?;
            }
        }
        Ok(replaced)
    }

    fn spawn_compactor(self: Arc<Self>) {
        let interval = self.ctx.options.compaction_interval;
        if interval.is_zero() {
            return;
        }
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(node) = weak.upgrade() else { return };
                if let Err(e) = node.compact_all(None, false).await {
                    tracing::warn!(error = %e.message, "background compaction failed");
                }
                if node.ctx.shared {
                    match prepared::collect_outcomes(node.ctx.meta.as_ref()).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::debug!(keys = n, "outcome keys no WAL tail needs deleted")
                        }
                        Err(e) => tracing::warn!(error = %e, "collecting outcome keys failed"),
                    }
                }
            }
        });
    }

    /// Appends one commit's records durably to every shard's log, without
    /// applying them; returns each shard's records with the LSN of its
    /// first. A commit that failed on some shard is recorded as aborted
    /// in the meta store, so no recovery replays the parts that did reach
    /// other shards' logs. Caller holds the write locks of all shards.
    async fn append_all<'a>(
        &self,
        channels: &BTreeMap<usize, Arc<Channel>>,
        records: &'a [(usize, TableInfo, WalRecord)],
    ) -> ApiResult<Vec<LoggedShard<'a>>> {
        let mut shards: Vec<usize> = records.iter().map(|(s, _, _)| *s).collect();
        shards.sort_unstable();
        shards.dedup();
        let per_shard: Vec<Vec<(&TableInfo, &WalRecord)>> = shards
            .iter()
            .map(|&s| {
                records
                    .iter()
                    .filter(|(r, _, _)| *r == s)
                    .map(|(_, info, record)| (info, record))
                    .collect()
            })
            .collect();
        let appends = futures::future::join_all(shards.iter().zip(&per_shard).map(|(&s, recs)| {
            let recs: Vec<&WalRecord> = recs.iter().map(|(_, r)| *r).collect();
            let ch = channels.get(&s).cloned();
            async move {
                let ch = ch.ok_or_else(|| not_owned(s as u32))?;
                ch.append(&self.ctx, &recs)
                    .await
                    .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))
            }
        }))
        .await;
        if let Some(failure) = appends.iter().find_map(|a| a.as_ref().err()) {
            let error = failure.clone();
            // The outcome of a failed append is unknown (a broker may have
            // kept it); recording the statement as aborted keeps recovery
            // from replaying a write that was never applied or acknowledged.
            let ts = records[0].2.ts;
            let mut attempt = 0;
            while let Err(e) = self
                .ctx
                .meta
                .put(&keys::aborted_statement(ts), Vec::new())
                .await
            {
                attempt += 1;
                if attempt == 5 {
                    tracing::error!(ts = %ts, error = %e, "could not record an aborted statement; a restart may replay it");
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
            }
            return Err(error);
        }
        let mut logged = Vec::with_capacity(shards.len());
        for ((s, recs), append) in shards.into_iter().zip(per_shard).zip(appends) {
            logged.push((s, recs, append?));
        }
        Ok(logged)
    }

    /// Applies records [`Self::append_all`] made durable, and schedules
    /// seals of shards that filled up. Caller holds the write locks.
    fn apply_all(
        &self,
        channels: &BTreeMap<usize, Arc<Channel>>,
        logged: Vec<LoggedShard<'_>>,
    ) -> ApiResult<()> {
        for (s, recs, first_lsn) in &logged {
            if let Some(ch) = channels.get(s) {
                ch.apply_logged(recs, *first_lsn)?;
            }
        }
        for (s, _, _) in &logged {
            if let Some(ch) = channels.get(s) {
                self.schedule_seal(ch);
            }
        }
        Ok(())
    }

    /// Makes one commit's records durable on every shard, then applies
    /// them; nothing is applied unless every append succeeded.
    async fn commit_all(
        &self,
        channels: &BTreeMap<usize, Arc<Channel>>,
        mut records: Vec<(usize, TableInfo, WalRecord)>,
    ) -> ApiResult<()> {
        if records.is_empty() {
            // Nothing changed; the statement still happened at `ts`.
            return Ok(());
        }
        let decided = self.ctx.shared && records[0].2.participants.len() > 1;
        if decided {
            for (_, _, record) in &mut records {
                record.decided = true;
            }
        }
        let logged = self.append_all(channels, &records).await?;
        if decided
            && !self
                .decide_holding_locks(records[0].2.ts, &records[0].2.participants)
                .await
        {
            return Err(ApiError::new(
                StatusCode::Unavailable,
                "the statement was aborted by the recovery of one of its shards; nothing was applied",
            ));
        }
        self.apply_all(channels, logged)
    }

    /// Records a logged statement as committed (unless a recovery aborted
    /// it first); retries while the meta store fails. The caller holds the
    /// shards' write locks, so nothing else reads or writes them meanwhile,
    /// and the outcome key is the only thing that can still change.
    async fn decide_holding_locks(&self, ts: Timestamp, participants: &[u32]) -> bool {
        let mut attempt = 0u32;
        loop {
            match prepared::decide_outcome(self.ctx.meta.as_ref(), ts, true, participants).await {
                Ok(committed) => return committed,
                Err(e) => {
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(ts = %ts, error = %e, "recording a commit failed; retrying");
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Starts a background flush of a full channel (one at a time).
    fn schedule_seal(&self, ch: &Arc<Channel>) {
        if !ch.is_full(&self.ctx) || ch.flush_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let ch = ch.clone();
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = ch.flush(&ctx).await {
                tracing::error!(channel = ch.id, error = %format!("{e:#}"), "background flush failed");
            }
            ch.flush_pending.store(false, Ordering::Release);
        });
    }

    /// Backpressure: a writer whose shard holds twice the seal threshold
    /// flushes it itself before returning, so memory stays bounded when
    /// writes outpace background flushes. Called without write locks.
    async fn throttle(&self, channels: &BTreeMap<usize, Arc<Channel>>) -> ApiResult<()> {
        for ch in channels.values() {
            if ch.data.read().growing_rows() >= 2 * self.ctx.options.seal_rows {
                ch.flush(&self.ctx).await?;
            }
        }
        Ok(())
    }

    /// Shards a table's rows are spread over.
    fn table_shards(&self, table: &TableInfo) -> u32 {
        table.shards.min(self.shards.count() as u32)
    }

    /// Checks requests (at most one per table) against the keys of every
    /// shard they touch, holding those shards' write locks from then on.
    /// `allowed`, when given, lists the shards the caller expects the
    /// requests to touch; any other shard is refused.
    async fn lock_and_plan(
        &self,
        requests: &[WriteRequest],
        allowed: Option<&[u32]>,
    ) -> ApiResult<LockedWrite> {
        for r in requests {
            self.check_current(&r.table).await?;
        }
        for (i, r) in requests.iter().enumerate() {
            if requests[..i].iter().any(|o| o.table.id == r.table.id) {
                return Err(ApiError::new(
                    StatusCode::Internal,
                    format!("two writes of table {} in one commit", r.table.name),
                ));
            }
        }
        let mut splits = Vec::with_capacity(requests.len());
        for request in requests {
            let table = &request.table;
            let shards = self.table_shards(table);
            let deletes = Self::split(&request.delete_keys, &key_only_columns(table), shards)?;
            let inserts = Self::split(&request.insert, &table.schema.primary_key, shards)?;
            splits.push((deletes, inserts));
        }
        // Lock every touched channel in ascending order (no deadlock), so the
        // conflict checks, the timestamp and the appends form one unit.
        let mut touched: Vec<usize> = splits
            .iter()
            .flat_map(|(deletes, inserts)| {
                (0..deletes.len()).filter(|&s| !is_empty(&deletes[s].0) || !is_empty(&inserts[s].0))
            })
            .collect();
        touched.sort_unstable();
        touched.dedup();
        if let Some(allowed) = allowed
            && let Some(&s) = touched.iter().find(|&&s| !allowed.contains(&(s as u32)))
        {
            return Err(ApiError::new(
                StatusCode::Internal,
                format!("a prepared change touches shard {s}, which it did not name"),
            ));
        }
        let mut channels = BTreeMap::new();
        let mut guards = Vec::with_capacity(touched.len());
        for &s in &touched {
            let ch = self.shards.get(s)?;
            guards.push(ch.lock_write().await?);
            channels.insert(s, ch);
        }
        let mut plans = Vec::new();
        for (r, (request, (deletes, inserts))) in requests.iter().zip(&splits).enumerate() {
            for (&s, ch) in &channels {
                // Tables of a commit may have different shard counts.
                if s >= deletes.len() || (is_empty(&deletes[s].0) && is_empty(&inserts[s].0)) {
                    continue;
                }
                let plan = ch.plan_write(
                    &request.table,
                    deletes[s].0.clone(),
                    inserts[s].0.clone(),
                    &inserts[s].1,
                    request.on_conflict,
                )?;
                plans.push((r, s, plan));
            }
        }
        Ok(LockedWrite {
            channels,
            guards,
            plans,
        })
    }

    /// Per request, the rows a locked write deletes and inserts (stamped
    /// with `ts`).
    fn results_of(locked: &LockedWrite, requests: usize, ts: Timestamp) -> Vec<WriteResult> {
        let mut results = vec![
            WriteResult {
                ts,
                ..WriteResult::default()
            };
            requests
        ];
        for (r, _, plan) in &locked.plans {
            results[*r].deleted += plan.deleted_existing;
            results[*r]
                .inserted_rows
                .extend(plan.inserted_rows.iter().copied());
        }
        for result in &mut results {
            result.inserted_rows.sort_unstable();
        }
        results
    }

    /// The WAL records of a locked write at `ts`. Every record names the
    /// shard of every record of the commit (a shard once per record it
    /// holds), so recovery can tell whether all of them are durable; a
    /// commit spanning several nodes names them all and is `decided` by
    /// its outcome key instead.
    fn records_of(
        requests: &[WriteRequest],
        plans: Vec<(usize, usize, WritePlan)>,
        ts: Timestamp,
        spanning: Option<&[u32]>,
    ) -> Vec<(usize, TableInfo, WalRecord)> {
        let participants: Vec<u32> = match spanning {
            Some(all) => all.to_vec(),
            None => {
                let local: Vec<u32> = plans
                    .iter()
                    .filter(|(_, _, p)| p.delete_keys.is_some() || p.insert.is_some())
                    .map(|(_, s, _)| *s as u32)
                    .collect();
                if local.len() > 1 { local } else { vec![] }
            }
        };
        plans
            .into_iter()
            .filter_map(|(r, s, plan)| {
                let table = &requests[r].table;
                Channel::record_for(table, plan, ts, &participants).map(|mut rec| {
                    rec.decided = spanning.is_some();
                    (s, table.clone(), rec)
                })
            })
            .collect()
    }

    /// Writes requests (at most one per table) at one commit timestamp: all
    /// of them become visible together and recovery replays all or none.
    /// Returns one result per request.
    async fn write_atomically(&self, requests: &[WriteRequest]) -> ApiResult<Vec<WriteResult>> {
        let mut locked = self.lock_and_plan(requests, None).await?;
        let ts = self.ctx.coordinator.allocate_timestamp().await?;
        let results = Self::results_of(&locked, requests.len(), ts);
        let plans = std::mem::take(&mut locked.plans);
        let records = Self::records_of(requests, plans, ts, None);
        self.commit_all(&locked.channels, records).await?;
        let LockedWrite {
            channels, guards, ..
        } = locked;
        drop(guards);
        self.throttle(&channels).await?;
        Ok(results)
    }

    /// Splits a batch into per-shard batches by primary key.
    fn split(
        batch: &Option<RecordBatch>,
        key_columns: &[usize],
        shards: u32,
    ) -> ApiResult<Vec<(Option<RecordBatch>, Vec<u32>)>> {
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
        if let Some(b) = batch {
            for (i, key) in keys_of(b, key_columns).iter().enumerate() {
                rows[shard_of(key, shards) as usize].push(i as u32);
            }
        }
        rows.into_iter()
            .map(|idx| match batch {
                Some(b) if !idx.is_empty() => {
                    let taken = take_record_batch(b, &UInt32Array::from(idx.clone()))
                        .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
                    Ok((Some(taken), idx))
                }
                _ => Ok((None, idx)),
            })
            .collect()
    }
}

impl StreamingNode {
    /// Refuses a table the catalog no longer has under that id (dropped,
    /// or dropped and created again): a proxy whose catalog copy lags a
    /// few milliseconds behind must not write rows nobody will see, nor
    /// read a dropped table. A table this node does not know yet may have
    /// been created a moment ago: the catalog is refreshed before refusing.
    async fn check_current(&self, table: &TableInfo) -> ApiResult<()> {
        let coordinator = &self.ctx.coordinator;
        let current = || {
            coordinator
                .table(&table.name)
                .is_some_and(|t| t.id == table.id)
        };
        if current() {
            return Ok(());
        }
        coordinator.refresh_catalog().await?;
        if current() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::UndefinedTable,
            format!(
                "relation \"{}\" does not exist (it was dropped or replaced meanwhile)",
                table.name
            ),
        ))
    }
}

/// Runs a change of durable state to its end in a task of its own. Between
/// a durable step (a WAL append, a meta-store batch) and the in-memory
/// update that must follow it, the caller's future may be dropped (a
/// client or proxy going away cancels its gRPC call): the rows would be
/// durable but not applied, so a retry could insert their keys again and a
/// restart would bring back both. A spawned task is not cancelled with its
/// caller, and it holds the shards' locks until it is done.
async fn detached<T, F>(change: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = ApiResult<T>> + Send + 'static,
{
    tokio::spawn(change).await.map_err(|e| {
        ApiError::new(
            StatusCode::Internal,
            format!("streaming node task failed: {e}"),
        )
    })?
}

#[async_trait]
impl StreamingApi for StreamingNode {
    async fn write(&self, request: WriteRequest) -> ApiResult<WriteResult> {
        let node = self.clone();
        detached(async move {
            if node.wants_direct_seal(&request) {
                return node.write_direct(&request).await;
            }
            let mut results = node
                .write_atomically(std::slice::from_ref(&request))
                .await?;
            Ok(results.pop().unwrap_or_default())
        })
        .await
    }

    async fn commit(&self, requests: Vec<WriteRequest>) -> ApiResult<Timestamp> {
        let node = self.clone();
        detached(async move {
            let results = node.write_atomically(&requests).await?;
            Ok(results.first().map(|r| r.ts).unwrap_or(Timestamp::ZERO))
        })
        .await
    }

    async fn existing_keys(&self, table: &TableInfo, keys: RecordBatch) -> ApiResult<Vec<bool>> {
        self.check_current(table).await?;
        let shards = self.table_shards(table);
        keys_of(&keys, &key_only_columns(table))
            .iter()
            .map(|key| {
                let ch = self.shards.get(shard_of(key, shards) as usize)?;
                ch.check_owned()?;
                Ok(ch.contains_key(table, key))
            })
            .collect()
    }

    async fn truncate(&self, table: &TableInfo) -> ApiResult<Timestamp> {
        let (node, table) = (self.clone(), table.clone());
        detached(async move { node.truncate_now(&table).await }).await
    }

    async fn wait_applied(&self, ts: Timestamp) -> ApiResult<Timestamp> {
        self.wait_applied_now(ts).await
    }

    async fn applied_ts(&self) -> ApiResult<Timestamp> {
        Ok(self
            .shards
            .owned()
            .iter()
            .map(|c| c.tick())
            .min()
            .unwrap_or(Timestamp::ZERO))
    }

    async fn acknowledged_ts(&self) -> ApiResult<Timestamp> {
        // A write is acknowledged only after its shard's tick passed its
        // timestamp, so the newest tick covers all of them; the other shards
        // then catch up to it (waiting for any write holding their lock).
        let newest = self
            .shards
            .owned()
            .iter()
            .map(|c| c.tick())
            .max()
            .unwrap_or(Timestamp::ZERO);
        self.wait_applied_now(newest).await
    }

    async fn snapshot(
        &self,
        table: &TableInfo,
        shard: ShardId,
        ts: Timestamp,
    ) -> ApiResult<ShardSnapshot> {
        self.check_current(table).await?;
        let ch = self.shards.get(shard.0 as usize)?;
        // A reader that did not wait for this shard (its proxy's idea of
        // the owners was stale) must not see part of a commit below `ts`.
        ch.wait_applied(ts).await;
        let snapshot = ch.snapshot(table, ts)?;
        // Handed over meanwhile: what was read may miss newer writes.
        ch.check_owned()?;
        Ok(snapshot)
    }

    async fn flush_all(&self) -> ApiResult<()> {
        let node = self.clone();
        detached(async move {
            for ch in node.shards.owned() {
                ch.flush(&node.ctx).await?;
            }
            Ok(())
        })
        .await
    }

    async fn compact(&self, table: Option<&TableInfo>) -> ApiResult<usize> {
        let (node, table) = (self.clone(), table.cloned());
        detached(async move { node.compact_all(table.as_ref(), true).await }).await
    }
}

impl StreamingNode {
    /// Every shard of `table` with its flush and write locks, taken in the
    /// order every path uses (flush locks first, ascending): no flush may
    /// be between freeze and swap while rows vanish.
    async fn lock_table_shards(
        &self,
        shards: &[u32],
    ) -> ApiResult<(
        BTreeMap<usize, Arc<Channel>>,
        Vec<OwnedMutexGuard<()>>,
        Vec<OwnedMutexGuard<()>>,
    )> {
        let mut channels = BTreeMap::new();
        for &s in shards {
            channels.insert(s as usize, self.shards.get(s as usize)?);
        }
        let mut flush_guards = Vec::with_capacity(channels.len());
        for ch in channels.values() {
            flush_guards.push(ch.lock_flush().await?);
        }
        let mut guards = Vec::with_capacity(channels.len());
        for ch in channels.values() {
            guards.push(ch.lock_write().await?);
        }
        Ok((channels, flush_guards, guards))
    }

    /// TRUNCATE's records: one per shard, naming all of them.
    fn truncate_records(
        table: &TableInfo,
        shards: &[u32],
        ts: Timestamp,
        spanning: Option<&[u32]>,
    ) -> Vec<(usize, TableInfo, WalRecord)> {
        let participants: Vec<u32> = match spanning {
            Some(all) => all.to_vec(),
            None if shards.len() > 1 => shards.to_vec(),
            None => vec![],
        };
        shards
            .iter()
            .map(|&s| {
                (
                    s as usize,
                    table.clone(),
                    WalRecord {
                        table: table.id,
                        ts,
                        kind: WalRecordKind::Truncate,
                        participants: participants.clone(),
                        decided: spanning.is_some(),
                    },
                )
            })
            .collect()
    }

    async fn truncate_now(&self, table: &TableInfo) -> ApiResult<Timestamp> {
        self.check_current(table).await?;
        // Every channel, not only the table's shards: a table's rows live in
        // the first `table.shards` channels, and TRUNCATE has always
        // cleared them all.
        let all: Vec<u32> = (0..self.shards.count() as u32).collect();
        let (channels, flush_guards, guards) = self.lock_table_shards(&all).await?;
        let ts = self.ctx.coordinator.allocate_timestamp().await?;
        let records = Self::truncate_records(table, &all, ts, None);
        self.commit_all(&channels, records).await?;
        // Flush so the truncated segments leave the manifest at once.
        for ch in channels.values() {
            ch.flush_holding_flush_lock(&self.ctx).await?;
        }
        drop(guards);
        drop(flush_guards);
        Ok(ts)
    }

    async fn wait_applied_now(&self, ts: Timestamp) -> ApiResult<Timestamp> {
        for ch in self.shards.owned() {
            ch.wait_applied(ts).await;
        }
        Ok(ts)
    }
}

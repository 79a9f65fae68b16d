//! The streaming role as a proxy sees it when several streaming nodes share
//! the shards: each call goes to the node owning the shard it is about, and
//! a statement spanning several nodes commits through their
//! [`ShardOwnerApi`] steps (prepare, one timestamp, log, finish).
//!
//! Who owns what is asked of the nodes themselves and kept until a node
//! says it does not own a shard (or cannot be reached): such a call never
//! ran, so it is sent again once ownership is known anew. Shards move when
//! a node dies or joins (see [`crate::ownership`]); calls wait for that for
//! at most [`OWNER_WAIT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use async_trait::async_trait;
use futures::future::join_all;
use parking_lot::RwLock;
use quiver_api::{
    ApiError, ApiResult, AppliedReport, CoordinatorApi, PreparedChange, ShardOwnerApi,
    ShardSnapshot, StatusCode, StreamingApi, TableInfo, WriteRequest, WriteResult,
};
use quiver_types::{ShardId, Timestamp, shard_of};

use crate::StreamingNode;
use crate::table_shard::{key_only_columns, keys_of};

/// How long a call waits for a shard to get an owner (a dead node's shards
/// move after its lease expires, and the next owner replays them).
pub const OWNER_WAIT: Duration = Duration::from_secs(15);

/// How long a node may take to say which shards it owns.
const OWNERS_QUERY: Duration = Duration::from_secs(2);

pub struct ShardRouter {
    peers: Vec<Arc<dyn ShardOwnerApi>>,
    shard_count: u32,
    /// Per shard, the index of its owner in `peers`.
    owners: RwLock<Vec<Option<usize>>>,
    coordinator: Arc<dyn CoordinatorApi>,
    next_txn: AtomicU64,
}

/// One owner's part of a statement: its requests (rows of its shards
/// only), which original request each is, and where its rows came from.
struct OwnerPart {
    shards: Vec<u32>,
    requests: Vec<WriteRequest>,
    origin: Vec<usize>,
    /// Per request, original row index of each inserted row.
    insert_rows: Vec<Vec<u32>>,
}

/// Per shard, row indexes into a batch.
type RowsByShard = Vec<Vec<u32>>;

/// A statement's rows split by shard: per request, per shard, the row
/// indexes of keys to delete and rows to insert.
struct Split {
    per_request: Vec<(RowsByShard, RowsByShard)>,
    touched: Vec<u32>,
}

/// A call the router may send again once it knows the owners anew:
/// refused by a node not owning the shard, or never delivered.
fn misrouted(e: &ApiError) -> bool {
    matches!(e.code, StatusCode::NotOwner | StatusCode::Unreachable)
}

fn unowned(shard: u32) -> ApiError {
    ApiError::new(
        StatusCode::NotOwner,
        format!("shard {shard} has no streaming node now (it is moving to another node)"),
    )
}

fn take(batch: &Option<RecordBatch>, rows: &[u32]) -> ApiResult<Option<RecordBatch>> {
    match batch {
        Some(b) if !rows.is_empty() => take_record_batch(b, &UInt32Array::from(rows.to_vec()))
            .map(Some)
            .map_err(|e| ApiError::from_error(StatusCode::Internal, &e)),
        _ => Ok(None),
    }
}

impl ShardRouter {
    /// `peers` are every streaming node of the cluster; `shard_count` is
    /// the number of WAL channels (`[coordinator] shards`).
    pub fn new(
        mut peers: Vec<Arc<dyn ShardOwnerApi>>,
        shard_count: u32,
        coordinator: Arc<dyn CoordinatorApi>,
    ) -> Arc<Self> {
        // The order commits lock the nodes in, the same in every proxy
        // whatever order its configuration lists them in.
        peers.sort_by_key(|p| p.label());
        Arc::new(ShardRouter {
            peers,
            shard_count,
            owners: RwLock::new(vec![None; shard_count as usize]),
            coordinator,
            next_txn: AtomicU64::new(rand::random::<u64>() >> 1),
        })
    }

    /// Asks every node which shards it owns.
    async fn refresh(&self) {
        let answers = join_all(
            self.peers
                .iter()
                .map(|p| tokio::time::timeout(OWNERS_QUERY, p.owned_shards())),
        )
        .await;
        let mut owners = vec![None; self.shard_count as usize];
        for (i, answer) in answers.into_iter().enumerate() {
            if let Ok(Ok(shards)) = answer {
                for s in shards {
                    if let Some(slot) = owners.get_mut(s as usize)
                        && slot.is_none()
                    {
                        *slot = Some(i);
                    }
                }
            }
        }
        *self.owners.write() = owners;
    }

    fn owner(&self, shard: u32) -> ApiResult<usize> {
        self.owners
            .read()
            .get(shard as usize)
            .copied()
            .flatten()
            .ok_or_else(|| unowned(shard))
    }

    /// The nodes owning at least one shard.
    fn owning_peers(&self) -> ApiResult<Vec<usize>> {
        let owners = self.owners.read();
        let mut peers: Vec<usize> = owners.iter().flatten().copied().collect();
        if peers.len() < owners.len() || owners.is_empty() {
            let missing = owners.iter().position(Option::is_none).unwrap_or(0);
            return Err(unowned(missing as u32));
        }
        peers.sort_unstable();
        peers.dedup();
        Ok(peers)
    }

    /// Runs `call` until it does not fail as never delivered, refreshing
    /// ownership in between, for at most [`OWNER_WAIT`].
    async fn routed<T, F, Fut>(&self, call: F) -> ApiResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ApiResult<T>>,
    {
        let deadline = Instant::now() + OWNER_WAIT;
        let mut first_retry = true;
        loop {
            match call().await {
                Err(e) if misrouted(&e) && Instant::now() < deadline => {
                    if !first_retry {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    first_retry = false;
                    self.refresh().await;
                }
                other => return other,
            }
        }
    }

    fn split(&self, requests: &[WriteRequest]) -> ApiResult<Split> {
        let mut per_request = Vec::with_capacity(requests.len());
        let mut touched = Vec::new();
        for r in requests {
            let shards = r.table.shards.min(self.shard_count).max(1);
            let by_shard = |batch: &Option<RecordBatch>, columns: &[usize]| {
                let mut rows: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
                if let Some(b) = batch {
                    for (i, key) in keys_of(b, columns).iter().enumerate() {
                        rows[shard_of(key, shards) as usize].push(i as u32);
                    }
                }
                rows
            };
            let deletes = by_shard(&r.delete_keys, &key_only_columns(&r.table));
            let inserts = by_shard(&r.insert, &r.table.schema.primary_key);
            for s in 0..shards as usize {
                if !deletes[s].is_empty() || !inserts[s].is_empty() {
                    touched.push(s as u32);
                }
            }
            per_request.push((deletes, inserts));
        }
        touched.sort_unstable();
        touched.dedup();
        Ok(Split {
            per_request,
            touched,
        })
    }

    /// Each owner's part of a split statement.
    fn parts(
        &self,
        requests: &[WriteRequest],
        split: &Split,
    ) -> ApiResult<BTreeMap<usize, OwnerPart>> {
        let mut parts: BTreeMap<usize, OwnerPart> = BTreeMap::new();
        for &s in &split.touched {
            parts
                .entry(self.owner(s)?)
                .or_insert_with(|| OwnerPart {
                    shards: Vec::new(),
                    requests: Vec::new(),
                    origin: Vec::new(),
                    insert_rows: Vec::new(),
                })
                .shards
                .push(s);
        }
        for part in parts.values_mut() {
            for (r, (request, (deletes, inserts))) in
                requests.iter().zip(&split.per_request).enumerate()
            {
                let pick = |by_shard: &RowsByShard| {
                    let mut rows: Vec<u32> = part
                        .shards
                        .iter()
                        .filter_map(|&s| by_shard.get(s as usize))
                        .flatten()
                        .copied()
                        .collect();
                    rows.sort_unstable();
                    rows
                };
                let (delete_rows, insert_rows) = (pick(deletes), pick(inserts));
                if delete_rows.is_empty() && insert_rows.is_empty() {
                    continue;
                }
                part.requests.push(WriteRequest {
                    table: request.table.clone(),
                    delete_keys: take(&request.delete_keys, &delete_rows)?,
                    insert: take(&request.insert, &insert_rows)?,
                    on_conflict: request.on_conflict,
                });
                part.origin.push(r);
                part.insert_rows.push(insert_rows);
            }
        }
        Ok(parts)
    }

    /// A statement's writes: sent whole to the one node owning every shard
    /// it touches, else committed across the owners.
    async fn write_routed(
        &self,
        requests: &[WriteRequest],
        single: bool,
    ) -> ApiResult<Vec<WriteResult>> {
        let split = &self.split(requests)?;
        self.routed(|| async move {
            let parts = self.parts(requests, split)?;
            if parts.len() > 1 {
                return self.commit_across(requests.len(), parts).await;
            }
            let peer = match parts.keys().next() {
                Some(&p) => p,
                // Nothing to write: any owner gives the statement its timestamp.
                None => *self.owning_peers()?.first().ok_or_else(|| unowned(0))?,
            };
            let peer = &self.peers[peer];
            if single {
                Ok(vec![peer.write(requests[0].clone()).await?])
            } else {
                let ts = peer.commit(requests.to_vec()).await?;
                Ok(vec![
                    WriteResult {
                        ts,
                        ..WriteResult::default()
                    };
                    requests.len()
                ])
            }
        })
        .await
    }

    /// Prepare, timestamp, log, finish on every owner (see [`ShardOwnerApi`]).
    async fn commit_across(
        &self,
        request_count: usize,
        parts: BTreeMap<usize, OwnerPart>,
    ) -> ApiResult<Vec<WriteResult>> {
        let changes: Vec<(usize, Vec<u32>, PreparedChange)> = parts
            .iter()
            .map(|(&p, part)| {
                (
                    p,
                    part.shards.clone(),
                    PreparedChange::Writes(part.requests.clone()),
                )
            })
            .collect();
        let (ts, prepared) = self.two_phase(changes).await?;
        let mut results = vec![
            WriteResult {
                ts,
                ..WriteResult::default()
            };
            request_count
        ];
        for (part, part_results) in parts.values().zip(prepared) {
            for (i, result) in part_results.into_iter().enumerate() {
                let r = part.origin[i];
                results[r].deleted += result.deleted;
                results[r].inserted_rows.extend(
                    result
                        .inserted_rows
                        .iter()
                        .map(|&row| part.insert_rows[i][row as usize]),
                );
            }
        }
        for result in &mut results {
            result.inserted_rows.sort_unstable();
        }
        Ok(results)
    }

    /// The commit protocol over `(peer, shards, change)`; returns the
    /// commit timestamp and each peer's prepare results.
    async fn two_phase(
        &self,
        changes: Vec<(usize, Vec<u32>, PreparedChange)>,
    ) -> ApiResult<(Timestamp, Vec<Vec<WriteResult>>)> {
        let txn = self.next_txn.fetch_add(1, Ordering::Relaxed);
        let peers: Vec<&Arc<dyn ShardOwnerApi>> =
            changes.iter().map(|(p, _, _)| &self.peers[*p]).collect();
        let mut participants: Vec<u32> = changes
            .iter()
            .flat_map(|(_, shards, _)| shards.iter().copied())
            .collect();
        participants.sort_unstable();
        let abort_all = || async {
            join_all(peers.iter().map(|p| p.finish_prepared(txn, false))).await;
        };
        // One node after the other, in peer order (each locks its shards
        // in ascending order): every commit takes its locks in one global
        // order, so two commits never wait for each other in a cycle.
        let mut results = Vec::with_capacity(changes.len());
        for ((_, shards, change), peer) in changes.into_iter().zip(&peers) {
            match peer.prepare(txn, shards, change).await {
                Ok(r) => results.push(r),
                Err(e) => {
                    abort_all().await;
                    return Err(e);
                }
            }
        }
        let ts = match self.coordinator.allocate_timestamp().await {
            Ok(ts) => ts,
            Err(e) => {
                abort_all().await;
                return Err(e);
            }
        };
        let logged = join_all(
            peers
                .iter()
                .map(|p| p.log_prepared(txn, ts, participants.clone())),
        )
        .await;
        if let Some(Err(e)) = logged.into_iter().find(Result::is_err) {
            abort_all().await;
            // Aborted everywhere (or given up by the participants): a
            // definite failure, whatever broke.
            let code = match e.code {
                StatusCode::OutcomeUnknown | StatusCode::Unreachable | StatusCode::NotOwner => {
                    StatusCode::Unavailable
                }
                other => other,
            };
            return Err(ApiError::new(code, e.message));
        }
        let finished = join_all(peers.iter().map(|p| p.finish_prepared(txn, true))).await;
        if finished.iter().any(|f| matches!(f, Ok(true))) {
            return Ok((ts, results));
        }
        if finished.iter().any(|f| matches!(f, Ok(false))) {
            return Err(ApiError::new(
                StatusCode::Unavailable,
                "the commit was given up by a streaming node before it was decided; nothing was applied",
            ));
        }
        let detail = finished
            .into_iter()
            .find_map(Result::err)
            .map(|e| e.message)
            .unwrap_or_default();
        Err(ApiError::new(
            StatusCode::OutcomeUnknown,
            format!("the commit may or may not have been applied: {detail}"),
        ))
    }

    /// Every owning node's [`ShardOwnerApi::applied_report`], once they
    /// covered every shard between them (else the owners are asked anew).
    async fn applied_everywhere(&self, until: Option<Timestamp>) -> ApiResult<Vec<AppliedReport>> {
        self.routed(|| async move {
            let peers = self.owning_peers()?;
            let reports = join_all(
                peers
                    .into_iter()
                    .map(|p| self.peers[p].applied_report(until)),
            )
            .await
            .into_iter()
            .collect::<ApiResult<Vec<_>>>()?;
            let mut covered = vec![false; self.shard_count as usize];
            for shard in reports.iter().flat_map(|r| &r.shards) {
                if let Some(slot) = covered.get_mut(*shard as usize) {
                    *slot = true;
                }
            }
            match covered.iter().position(|c| !c) {
                Some(missing) => Err(unowned(missing as u32)),
                None => Ok(reports),
            }
        })
        .await
    }

    /// `call` on every node owning a shard.
    async fn on_owners<T, F, Fut>(&self, call: F) -> ApiResult<Vec<T>>
    where
        F: Fn(Arc<dyn ShardOwnerApi>) -> Fut,
        Fut: std::future::Future<Output = ApiResult<T>>,
    {
        let call = &call;
        self.routed(|| async move {
            let peers = self.owning_peers()?;
            join_all(peers.into_iter().map(|p| call(self.peers[p].clone())))
                .await
                .into_iter()
                .collect()
        })
        .await
    }
}

#[async_trait]
impl StreamingApi for ShardRouter {
    async fn write(&self, request: WriteRequest) -> ApiResult<WriteResult> {
        let mut results = self
            .write_routed(std::slice::from_ref(&request), true)
            .await?;
        Ok(results.pop().unwrap_or_default())
    }

    async fn commit(&self, requests: Vec<WriteRequest>) -> ApiResult<Timestamp> {
        let results = self.write_routed(&requests, false).await?;
        Ok(results.first().map(|r| r.ts).unwrap_or(Timestamp::ZERO))
    }

    async fn existing_keys(&self, table: &TableInfo, keys: RecordBatch) -> ApiResult<Vec<bool>> {
        let shards = table.shards.min(self.shard_count).max(1);
        let mut by_shard: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
        for (i, key) in keys_of(&keys, &key_only_columns(table)).iter().enumerate() {
            by_shard[shard_of(key, shards) as usize].push(i as u32);
        }
        let keys = &Some(keys);
        let by_shard = &by_shard;
        self.routed(|| async move {
            let mut per_peer: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            for (s, rows) in by_shard.iter().enumerate() {
                if !rows.is_empty() {
                    per_peer
                        .entry(self.owner(s as u32)?)
                        .or_default()
                        .extend(rows);
                }
            }
            let mut found = vec![false; keys.as_ref().map_or(0, |k| k.num_rows())];
            let answers = join_all(per_peer.iter().map(|(&p, rows)| {
                let batch = take(keys, rows);
                async move {
                    match batch? {
                        Some(b) => self.peers[p].existing_keys(table, b).await,
                        None => Ok(Vec::new()),
                    }
                }
            }))
            .await;
            for ((_, rows), answer) in per_peer.iter().zip(answers) {
                for (&row, exists) in rows.iter().zip(answer?) {
                    found[row as usize] = exists;
                }
            }
            Ok(found)
        })
        .await
    }

    async fn truncate(&self, table: &TableInfo) -> ApiResult<Timestamp> {
        self.routed(|| async move {
            let mut parts: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            for s in 0..self.shard_count {
                parts.entry(self.owner(s)?).or_default().push(s);
            }
            if parts.len() == 1 {
                let peer = *parts.keys().next().unwrap_or(&0);
                return self.peers[peer].truncate(table).await;
            }
            let changes = parts
                .into_iter()
                .map(|(p, shards)| (p, shards, PreparedChange::Truncate(table.clone())))
                .collect();
            Ok(self.two_phase(changes).await?.0)
        })
        .await
    }

    async fn wait_applied(&self, ts: Timestamp) -> ApiResult<Timestamp> {
        self.applied_everywhere(Some(ts)).await?;
        Ok(ts)
    }

    async fn applied_ts(&self) -> ApiResult<Timestamp> {
        let ticks = self
            .on_owners(|p| async move { p.applied_ts().await })
            .await?;
        Ok(ticks.into_iter().min().unwrap_or(Timestamp::ZERO))
    }

    async fn acknowledged_ts(&self) -> ApiResult<Timestamp> {
        // Each node's newest tick covers what it acknowledged; the newest
        // of them covers every acknowledged write, once all nodes applied
        // up to it.
        let reports = self.applied_everywhere(None).await?;
        let newest = reports
            .iter()
            .map(|r| r.ts)
            .max()
            .unwrap_or(Timestamp::ZERO);
        if reports.iter().any(|r| r.ts < newest) {
            self.applied_everywhere(Some(newest)).await?;
        }
        Ok(newest)
    }

    async fn snapshot(
        &self,
        table: &TableInfo,
        shard: ShardId,
        ts: Timestamp,
    ) -> ApiResult<ShardSnapshot> {
        self.routed(|| async move {
            let peer = self.owner(shard.0)?;
            self.peers[peer].snapshot(table, shard, ts).await
        })
        .await
    }

    async fn flush_all(&self) -> ApiResult<()> {
        self.on_owners(|p| async move { p.flush_all().await })
            .await?;
        Ok(())
    }

    async fn compact(&self, table: Option<&TableInfo>) -> ApiResult<usize> {
        let replaced = self
            .on_owners(|p| async move { p.compact(table).await })
            .await?;
        Ok(replaced.into_iter().sum())
    }
}

/// Lets a router front streaming nodes in this process (tests) as well as
/// remote ones.
impl StreamingNode {
    pub fn as_peer(self: &Arc<Self>) -> Arc<dyn ShardOwnerApi> {
        self.clone()
    }
}

//! The participant's side of a commit spanning several streaming nodes
//! ([`ShardOwnerApi`]): a change prepared here holds its shards' locks
//! between the proxy's calls, is logged at the commit timestamp, and is
//! applied only once its outcome key in the meta store says `commit`.
//!
//! The outcome key is created once: by the first participant told to
//! commit (the proxy says so only after every part was logged), or by a
//! participant giving up on a silent proxy, or by recovery finding a
//! logged part with no outcome (both write `abort`). Whoever comes second
//! reads the first one's decision, so no shard applies a commit another
//! shard dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quiver_api::{
    ApiError, ApiResult, AppliedReport, PreparedChange, ShardOwnerApi, StatusCode, TableInfo,
    WriteRequest, WriteResult,
};
use quiver_meta::{MetaError, MetaOp, MetaStore, keys};
use quiver_segment::WalRecord;
use quiver_types::Timestamp;
use quiver_wal::Lsn;
use tokio::sync::OwnedMutexGuard;

use crate::channel::{Channel, WritePlan};
use crate::{LockedWrite, LoggedShard, StreamingNode, detached};

/// How long a prepared change waits for the proxy's next call before the
/// participant gives it up. Long against a healthy proxy's few
/// milliseconds between calls; short enough that a dead proxy's locks do
/// not stall the shard for long.
const PREPARED_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a decided change's outcome stays known, for a proxy asking
/// again after a broken connection.
const RESOLVED_KEEP: Duration = Duration::from_secs(120);

const COMMIT: &str = "commit";
const ABORT: &str = "abort";

/// Most outcome keys one collection round deletes (one meta-store batch).
const COLLECT_BATCH: usize = 100;

/// Decides the statement at `ts` over the shards `participants` (`commit`
/// or not) unless it is decided already; returns the decision that stands.
/// The key's value is the decision and the participants (which tell
/// [`collect_outcomes`] when the key is no longer needed).
pub(crate) async fn decide_outcome(
    meta: &dyn MetaStore,
    ts: Timestamp,
    commit: bool,
    participants: &[u32],
) -> Result<bool, MetaError> {
    let key = keys::outcome(ts);
    let shards: Vec<String> = participants.iter().map(u32::to_string).collect();
    let value = format!(
        "{} {}",
        if commit { COMMIT } else { ABORT },
        shards.join(",")
    );
    match meta.compare_and_put(&key, None, value.into_bytes()).await {
        Ok(()) => Ok(commit),
        Err(MetaError::Conflict { .. }) => Ok(meta
            .get(&key)
            .await?
            .is_some_and(|v| v.starts_with(COMMIT.as_bytes()))),
        Err(e) => Err(e),
    }
}

/// Deletes outcome keys no WAL tail needs any more: every participant's
/// channel sealed past the statement (its flushed timestamp is at least
/// the statement's). A committed part was applied before its channel's
/// tick passed the statement, so that seal's checkpoint is past it; an
/// aborted part still in a tail is decided `abort` again by recovery,
/// which finds no key. Returns how many keys went.
pub(crate) async fn collect_outcomes(meta: &dyn MetaStore) -> Result<usize, MetaError> {
    let mut flushed: HashMap<u32, Timestamp> = HashMap::new();
    let mut deletes = Vec::new();
    for (key, value) in meta.scan_prefix(keys::OUTCOMES).await? {
        let Some(ts) = key
            .strip_prefix(keys::OUTCOMES)
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let value = String::from_utf8_lossy(&value);
        let participants: Vec<u32> = value
            .split_once(' ')
            .map(|(_, shards)| shards.split(',').filter_map(|s| s.parse().ok()).collect())
            .unwrap_or_default();
        if participants.is_empty() {
            continue;
        }
        let mut sealed = true;
        for p in participants {
            let at = match flushed.get(&p) {
                Some(at) => *at,
                None => {
                    let at = quiver_meta::get_json::<Timestamp>(meta, &keys::channel_flushed_ts(p))
                        .await?
                        .unwrap_or(Timestamp::ZERO);
                    flushed.insert(p, at);
                    at
                }
            };
            if at.0 < ts {
                sealed = false;
                break;
            }
        }
        if sealed {
            deletes.push(MetaOp::Delete { key });
            if deletes.len() == COLLECT_BATCH {
                break;
            }
        }
    }
    let collected = deletes.len();
    if collected > 0 {
        meta.batch(deletes).await?;
    }
    Ok(collected)
}

#[derive(Default)]
pub(crate) struct Registry {
    entries: parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Entry>>>>,
}

enum Entry {
    Prepared(Box<Prepared>),
    /// Decided: whether it committed.
    Resolved(bool),
}

struct Prepared {
    channels: BTreeMap<usize, Arc<Channel>>,
    /// Flush locks (TRUNCATE only), then write locks: held until the
    /// change is decided, released when it is dropped.
    _flush_guards: Vec<OwnedMutexGuard<()>>,
    _write_guards: Vec<OwnedMutexGuard<()>>,
    change: Pending,
    logged: Option<Logged>,
}

enum Pending {
    Writes {
        requests: Vec<WriteRequest>,
        /// Taken when the records are made.
        plans: Vec<(usize, usize, WritePlan)>,
    },
    Truncate {
        table: TableInfo,
        shards: Vec<u32>,
    },
}

struct Logged {
    ts: Timestamp,
    /// Every shard of the commit.
    participants: Vec<u32>,
    records: Vec<(usize, TableInfo, WalRecord)>,
    /// Each shard's first LSN.
    first_lsns: Vec<(usize, Lsn)>,
}

fn unknown(txn: u64) -> ApiError {
    ApiError::new(
        StatusCode::Unavailable,
        format!("prepared commit {txn} is not known here (it was given up or its node restarted)"),
    )
}

impl StreamingNode {
    fn prepared_entry(&self, txn: u64) -> ApiResult<Arc<tokio::sync::Mutex<Entry>>> {
        self.prepared
            .entries
            .lock()
            .get(&txn)
            .cloned()
            .ok_or_else(|| unknown(txn))
    }

    async fn prepare_now(
        &self,
        txn: u64,
        shards: Vec<u32>,
        change: PreparedChange,
    ) -> ApiResult<Vec<WriteResult>> {
        let (prepared, results) = match change {
            PreparedChange::Writes(requests) => {
                let mut locked = self.lock_and_plan(&requests, Some(&shards)).await?;
                let results = Self::results_of(&locked, requests.len(), Timestamp::ZERO);
                let plans = std::mem::take(&mut locked.plans);
                let LockedWrite {
                    channels, guards, ..
                } = locked;
                let prepared = Prepared {
                    channels,
                    _flush_guards: Vec::new(),
                    _write_guards: guards,
                    change: Pending::Writes { requests, plans },
                    logged: None,
                };
                (prepared, results)
            }
            PreparedChange::Truncate(table) => {
                self.check_current(&table).await?;
                let (channels, flush_guards, guards) = self.lock_table_shards(&shards).await?;
                let prepared = Prepared {
                    channels,
                    _flush_guards: flush_guards,
                    _write_guards: guards,
                    change: Pending::Truncate { table, shards },
                    logged: None,
                };
                (prepared, Vec::new())
            }
        };
        let entry = Arc::new(tokio::sync::Mutex::new(Entry::Prepared(Box::new(prepared))));
        if self
            .prepared
            .entries
            .lock()
            .insert(txn, entry.clone())
            .is_some()
        {
            return Err(ApiError::new(
                StatusCode::Internal,
                format!("prepared commit {txn} exists already"),
            ));
        }
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PREPARED_TIMEOUT).await;
            node.give_up(txn, entry).await;
        });
        Ok(results)
    }

    /// The proxy went silent: a change not logged is dropped; a logged one
    /// is aborted unless a participant already committed it (then it is
    /// applied here too). Retries while the meta store fails.
    async fn give_up(&self, txn: u64, entry: Arc<tokio::sync::Mutex<Entry>>) {
        loop {
            let mut state = entry.lock().await;
            if matches!(*state, Entry::Resolved(_)) {
                return;
            }
            tracing::warn!(
                txn,
                "a prepared commit heard nothing from its proxy; deciding it here"
            );
            match self.resolve(txn, &mut state, false).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(txn, error = %e.message, "deciding a silent prepared commit failed; retrying");
                }
            }
            drop(state);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn log_now(&self, txn: u64, ts: Timestamp, participants: Vec<u32>) -> ApiResult<()> {
        let entry = self.prepared_entry(txn)?;
        let mut state = entry.lock().await;
        let Entry::Prepared(prepared) = &mut *state else {
            return Err(unknown(txn));
        };
        if prepared.logged.is_some() {
            return Ok(());
        }
        let records = match &mut prepared.change {
            Pending::Writes { requests, plans } => {
                Self::records_of(requests, std::mem::take(plans), ts, Some(&participants))
            }
            Pending::Truncate { table, shards } => {
                Self::truncate_records(table, shards, ts, Some(&participants))
            }
        };
        let first_lsns = if records.is_empty() {
            Vec::new()
        } else {
            match self.append_all(&prepared.channels, &records).await {
                Ok(logged) => logged.into_iter().map(|(s, _, lsn)| (s, lsn)).collect(),
                Err(e) => {
                    // Its plans are spent and the statement is recorded as
                    // aborted: it can only be dropped now.
                    *state = Entry::Resolved(false);
                    return Err(e);
                }
            }
        };
        prepared.logged = Some(Logged {
            ts,
            participants,
            records,
            first_lsns,
        });
        Ok(())
    }

    async fn finish_now(&self, txn: u64, commit: bool) -> ApiResult<bool> {
        let entry = self.prepared_entry(txn)?;
        let mut state = entry.lock().await;
        self.resolve(txn, &mut state, commit).await
    }

    /// Decides (see the module comment), applies a commit, releases the
    /// locks and remembers the outcome for a while.
    async fn resolve(&self, txn: u64, state: &mut Entry, commit: bool) -> ApiResult<bool> {
        let prepared = match state {
            Entry::Resolved(outcome) => return Ok(*outcome),
            Entry::Prepared(prepared) => prepared,
        };
        // Decided by the key even when this node's part changes nothing:
        // the other parts must not be applied unless all are.
        let committed = match &prepared.logged {
            None if commit => {
                return Err(ApiError::new(
                    StatusCode::Internal,
                    format!("prepared commit {txn} was told to commit before it was logged"),
                ));
            }
            None => false,
            Some(logged) => decide_outcome(
                self.ctx.meta.as_ref(),
                logged.ts,
                commit,
                &logged.participants,
            )
            .await
            .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?,
        };
        // Resolved before applying: whatever fails below, nothing applies
        // the change a second time.
        let Entry::Prepared(prepared) = std::mem::replace(state, Entry::Resolved(committed)) else {
            return Ok(committed);
        };
        let registry = self.prepared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESOLVED_KEEP).await;
            registry.entries.lock().remove(&txn);
        });
        if committed && let Some(logged) = &prepared.logged {
            let applied: Vec<LoggedShard<'_>> = logged
                .first_lsns
                .iter()
                .map(|&(s, lsn)| {
                    let recs = logged
                        .records
                        .iter()
                        .filter(|(r, _, _)| *r == s)
                        .map(|(_, info, record)| (info, record))
                        .collect();
                    (s, recs, lsn)
                })
                .collect();
            self.apply_all(&prepared.channels, applied)?;
            if let Pending::Truncate { .. } = prepared.change {
                // As a local TRUNCATE: the truncated segments leave the
                // manifest at once.
                for ch in prepared.channels.values() {
                    ch.flush_holding_flush_lock(&self.ctx).await?;
                }
            }
        }
        Ok(committed)
    }
}

#[async_trait]
impl ShardOwnerApi for StreamingNode {
    fn label(&self) -> String {
        "in-process streaming node".to_string()
    }

    async fn owned_shards(&self) -> ApiResult<Vec<u32>> {
        Ok(self.owned_shard_ids())
    }

    async fn applied_report(&self, until: Option<Timestamp>) -> ApiResult<AppliedReport> {
        let owned = self.shards.owned();
        let ts = until.unwrap_or_else(|| {
            owned
                .iter()
                .map(|c| c.tick())
                .max()
                .unwrap_or(Timestamp::ZERO)
        });
        for ch in &owned {
            ch.wait_applied(ts).await;
        }
        let shards = owned
            .iter()
            .filter(|c| c.is_owned())
            .map(|c| c.id)
            .collect();
        Ok(AppliedReport { shards, ts })
    }

    async fn prepare(
        &self,
        txn: u64,
        shards: Vec<u32>,
        change: PreparedChange,
    ) -> ApiResult<Vec<WriteResult>> {
        let node = self.clone();
        detached(async move { node.prepare_now(txn, shards, change).await }).await
    }

    async fn log_prepared(&self, txn: u64, ts: Timestamp, participants: Vec<u32>) -> ApiResult<()> {
        let node = self.clone();
        detached(async move { node.log_now(txn, ts, participants).await }).await
    }

    async fn finish_prepared(&self, txn: u64, commit: bool) -> ApiResult<bool> {
        let node = self.clone();
        detached(async move { node.finish_now(txn, commit).await }).await
    }
}

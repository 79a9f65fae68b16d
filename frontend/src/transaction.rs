//! Explicit transactions (`BEGIN` ... `COMMIT` / `ROLLBACK`).
//!
//! A transaction's writes are buffered in its session, per table and
//! primary key, as the net change against committed data: the new version
//! of each row it wrote, and which committed rows it deletes or replaces.
//! Its own statements read committed data (a fresh snapshot per statement,
//! PostgreSQL's READ COMMITTED) overlaid with that buffer, so they see
//! their own writes; nobody else does. `COMMIT` hands every table's net
//! change to the streaming nodes as one atomic write at one commit
//! timestamp; `ROLLBACK` drops the buffer.
//!
//! Buffering at the proxy (rather than locking rows on the streaming
//! nodes) keeps proxies the only place a session lives and costs nothing
//! for the autocommit statements most vector workloads send. The price is
//! optimistic concurrency: a duplicate key is caught at the INSERT when the
//! committed row already exists, or at COMMIT when another transaction
//! committed it meanwhile; concurrent UPDATE/DELETE of the same row is not
//! detected (the last commit wins).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{interleave_record_batch, take_record_batch};
use quiver_api::{ConflictPolicy, StreamingApi, TableInfo, WriteRequest, WriteResult};
use quiver_planner::{SqlError, sqlstate};
use quiver_types::{PkEncoder, PrimaryKey, TableId, Timestamp};

use crate::engine::Output;
use crate::error::from_api;
use crate::session::{Session, TransactionState};
use pgwire::api::results::Tag;

/// Where one row sits: (batch, row) in a [`PendingTable`]'s batches.
type Loc = (usize, usize);

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The key, in `PendingTable::keys`.
    key: Loc,
    /// The row's new version, in `PendingTable::rows`; `None` = deleted.
    row: Option<Loc>,
    /// Whether the committed row with this key (if it still exists at
    /// COMMIT) is deleted or replaced by this transaction.
    deletes_committed: bool,
}

#[derive(Debug, Clone)]
struct PendingTable {
    info: TableInfo,
    entries: HashMap<PrimaryKey, Entry>,
    /// Key-only batches.
    keys: Vec<RecordBatch>,
    /// Full rows.
    rows: Vec<RecordBatch>,
}

/// A table's pending changes as reads see them: committed rows with a
/// hidden key are replaced by (or removed in favour of) `rows`.
#[derive(Debug)]
pub struct TableOverlay {
    pub hidden: HashSet<PrimaryKey>,
    /// The transaction's live rows of the table (all columns).
    pub rows: Option<RecordBatch>,
    key_columns: Vec<usize>,
}

impl TableOverlay {
    /// `batch` (all table columns) without the rows this transaction
    /// deleted or rewrote.
    pub fn without_hidden(
        &self,
        batch: &RecordBatch,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        if self.hidden.is_empty() || batch.num_rows() == 0 {
            return Ok(batch.clone());
        }
        let enc = PkEncoder::new(batch, &self.key_columns);
        let keep: Vec<u32> = (0..batch.num_rows())
            .filter(|&i| !self.hidden.contains(&enc.key(i)))
            .map(|i| i as u32)
            .collect();
        if keep.len() == batch.num_rows() {
            return Ok(batch.clone());
        }
        take_record_batch(batch, &UInt32Array::from(keep))
    }

    /// How many committed rows this overlay can hide (a vector search asks
    /// every part for that many extra candidates).
    pub fn hidden_count(&self) -> usize {
        self.hidden.len()
    }
}

/// Every table's overlay, handed to scans through the session config.
#[derive(Debug, Default)]
pub struct PendingWrites(pub HashMap<TableId, Arc<TableOverlay>>);

#[derive(Debug, Default)]
pub struct Transaction {
    tables: BTreeMap<TableId, PendingTable>,
    overlay: Option<Arc<PendingWrites>>,
    /// `SAVEPOINT`s, oldest first, with the buffer as it was then.
    savepoints: Vec<(String, BTreeMap<TableId, PendingTable>)>,
    /// Memory of the batches buffered so far (never decreases: rewritten
    /// rows keep their batches until COMMIT).
    buffered_bytes: usize,
}

fn no_savepoint(name: &str) -> SqlError {
    SqlError::new("3B001", format!("savepoint \"{name}\" does not exist"))
}

fn duplicate_key(info: &TableInfo) -> SqlError {
    SqlError::new(
        sqlstate::UNIQUE_VIOLATION,
        format!(
            "duplicate key value violates unique constraint \"{}_pkey\"",
            info.name
        ),
    )
}

fn arrow_err(e: arrow::error::ArrowError) -> SqlError {
    SqlError::new("XX000", e.to_string())
}

/// What one inserted row does to the buffer.
enum RowState {
    /// The transaction holds a live version of the key.
    LivePending,
    /// The transaction deleted the key.
    DeletedPending,
    /// Untouched by the transaction; committed row exists (or not).
    Committed(bool),
}

impl Transaction {
    /// `SAVEPOINT name`: remembers the buffer (cheap: batches are shared).
    pub fn savepoint(&mut self, name: String) {
        self.savepoints.push((name, self.tables.clone()));
    }

    /// `ROLLBACK TO SAVEPOINT name`: the buffer as it was at the newest
    /// savepoint of that name, which stays defined.
    pub fn rollback_to(&mut self, name: &str) -> Result<(), SqlError> {
        let at = self
            .savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| no_savepoint(name))?;
        self.savepoints.truncate(at + 1);
        self.tables = self.savepoints[at].1.clone();
        self.overlay = None;
        Ok(())
    }

    /// `RELEASE SAVEPOINT name`: forgets it and every later one; the
    /// writes since stay.
    pub fn release(&mut self, name: &str) -> Result<(), SqlError> {
        let at = self
            .savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| no_savepoint(name))?;
        self.savepoints.truncate(at);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|t| t.entries.is_empty())
    }

    /// Buffers one statement's write; returns what the statement did as if
    /// it had been written (deleted rows, inserted row indexes). Nothing is
    /// buffered if it fails.
    pub async fn apply(
        &mut self,
        streaming: &dyn StreamingApi,
        request: WriteRequest,
        limit_bytes: usize,
    ) -> Result<WriteResult, SqlError> {
        let incoming = request
            .insert
            .as_ref()
            .map_or(0, |b| b.get_array_memory_size())
            + request
                .delete_keys
                .as_ref()
                .map_or(0, |b| b.get_array_memory_size());
        if self.buffered_bytes.saturating_add(incoming) > limit_bytes {
            return Err(SqlError::new(
                "54000",
                format!(
                    "transaction buffer limit exceeded: the block's writes would exceed {} MiB ([frontend] transaction_buffer_mb); commit in smaller blocks",
                    limit_bytes >> 20
                ),
            ));
        }
        self.buffered_bytes += incoming;
        let info = request.table.clone();
        let pending = self.tables.entry(info.id).or_insert_with(|| PendingTable {
            info: info.clone(),
            entries: HashMap::new(),
            keys: Vec::new(),
            rows: Vec::new(),
        });
        // Decide everything before changing anything.
        let mut states = Vec::new();
        let mut insert_keys = Vec::new();
        if let Some(rows) = &request.insert {
            let enc = PkEncoder::new(rows, &info.schema.primary_key);
            insert_keys = (0..rows.num_rows()).map(|i| enc.key(i)).collect::<Vec<_>>();
            let deleting: HashSet<PrimaryKey> = match &request.delete_keys {
                Some(keys) => {
                    let key_columns: Vec<usize> = (0..keys.num_columns()).collect();
                    let enc = PkEncoder::new(keys, &key_columns);
                    (0..keys.num_rows()).map(|i| enc.key(i)).collect()
                }
                None => HashSet::new(),
            };
            let unknown: Vec<u32> = insert_keys
                .iter()
                .enumerate()
                .filter(|(_, k)| !pending.entries.contains_key(*k) && !deleting.contains(*k))
                .map(|(i, _)| i as u32)
                .collect();
            let committed = if unknown.is_empty() {
                Vec::new()
            } else {
                let keys = take_record_batch(
                    &rows.project(&info.schema.primary_key).map_err(arrow_err)?,
                    &UInt32Array::from(unknown.clone()),
                )
                .map_err(arrow_err)?;
                streaming
                    .existing_keys(&info, keys)
                    .await
                    .map_err(from_api)?
            };
            let committed: HashMap<u32, bool> = unknown.into_iter().zip(committed).collect();
            for (i, key) in insert_keys.iter().enumerate() {
                let state = if deleting.contains(key) {
                    RowState::DeletedPending
                } else {
                    match pending.entries.get(key) {
                        Some(e) if e.row.is_some() => RowState::LivePending,
                        Some(_) => RowState::DeletedPending,
                        None => RowState::Committed(
                            committed.get(&(i as u32)).copied().unwrap_or(false),
                        ),
                    }
                };
                states.push(state);
            }
        }
        let mut inserted_rows = Vec::new();
        let mut seen = HashSet::new();
        for (i, (key, state)) in insert_keys.iter().zip(&states).enumerate() {
            let exists = matches!(state, RowState::LivePending | RowState::Committed(true));
            if !seen.insert(key) {
                match request.on_conflict {
                    ConflictPolicy::Skip => continue,
                    _ => return Err(duplicate_key(&info)),
                }
            }
            match (request.on_conflict, exists) {
                (ConflictPolicy::Error, true) => return Err(duplicate_key(&info)),
                (ConflictPolicy::Skip, true) => continue,
                _ => inserted_rows.push(i as u32),
            }
        }
        let result = WriteResult {
            ts: Timestamp::ZERO,
            deleted: request
                .delete_keys
                .as_ref()
                .map_or(0, |k| k.num_rows() as u64),
            inserted_rows: inserted_rows.clone(),
        };
        // Apply: deletes first, then the inserted rows.
        if let Some(keys) = &request.delete_keys {
            let batch = pending.keys.len();
            pending.keys.push(
                RecordBatch::try_new(info.schema.key_schema(), keys.columns().to_vec())
                    .map_err(arrow_err)?,
            );
            let key_columns: Vec<usize> = (0..keys.num_columns()).collect();
            let enc = PkEncoder::new(keys, &key_columns);
            for row in 0..keys.num_rows() {
                let key = enc.key(row);
                match pending.entries.get_mut(&key) {
                    Some(e) if e.deletes_committed => e.row = None,
                    Some(_) => {
                        pending.entries.remove(&key);
                    }
                    None => {
                        pending.entries.insert(
                            key,
                            Entry {
                                key: (batch, row),
                                row: None,
                                deletes_committed: true,
                            },
                        );
                    }
                }
            }
        }
        if let Some(rows) = &request.insert
            && !inserted_rows.is_empty()
        {
            // One schema per list, whichever statement the batch came from.
            let rows_batch = pending.rows.len();
            pending.rows.push(
                RecordBatch::try_new(info.schema.arrow_schema(), rows.columns().to_vec())
                    .map_err(arrow_err)?,
            );
            let keys_batch = pending.keys.len();
            let key_columns = rows.project(&info.schema.primary_key).map_err(arrow_err)?;
            pending.keys.push(
                RecordBatch::try_new(info.schema.key_schema(), key_columns.columns().to_vec())
                    .map_err(arrow_err)?,
            );
            for &i in &inserted_rows {
                let i = i as usize;
                let key = insert_keys[i].clone();
                let replaces = matches!(states[i], RowState::Committed(true));
                let entry = pending.entries.entry(key).or_insert(Entry {
                    key: (keys_batch, i),
                    row: None,
                    deletes_committed: replaces,
                });
                entry.row = Some((rows_batch, i));
            }
        }
        self.overlay = None;
        Ok(result)
    }

    /// The overlay reads of this transaction apply (cached until the next write).
    pub fn overlay(&mut self) -> Result<Option<Arc<PendingWrites>>, SqlError> {
        if self.is_empty() {
            return Ok(None);
        }
        if let Some(o) = &self.overlay {
            return Ok(Some(o.clone()));
        }
        let mut tables = HashMap::new();
        for (id, t) in &self.tables {
            if t.entries.is_empty() {
                continue;
            }
            tables.insert(
                *id,
                Arc::new(TableOverlay {
                    hidden: t.entries.keys().cloned().collect(),
                    rows: t.live_rows()?,
                    key_columns: t.info.schema.primary_key.clone(),
                }),
            );
        }
        let overlay = Arc::new(PendingWrites(tables));
        self.overlay = Some(overlay.clone());
        Ok(Some(overlay))
    }

    /// Writes every table's net change atomically; returns the commit
    /// timestamp (`None` if the transaction wrote nothing).
    pub async fn commit(
        self,
        streaming: Arc<dyn StreamingApi>,
    ) -> Result<Option<Timestamp>, SqlError> {
        let mut requests = Vec::new();
        for t in self.tables.into_values() {
            if t.entries.is_empty() {
                continue;
            }
            let deleted: Vec<Loc> = t
                .entries
                .values()
                .filter(|e| e.deletes_committed)
                .map(|e| e.key)
                .collect();
            let delete_keys = if deleted.is_empty() {
                None
            } else {
                let batches: Vec<&RecordBatch> = t.keys.iter().collect();
                Some(interleave_record_batch(&batches, &deleted).map_err(arrow_err)?)
            };
            requests.push(WriteRequest {
                insert: t.live_rows()?,
                delete_keys,
                table: t.info,
                on_conflict: ConflictPolicy::Error,
            });
        }
        if requests.is_empty() {
            return Ok(None);
        }
        // Its own task, so a cancel request cannot interrupt the commit.
        let ts = tokio::spawn(async move { streaming.commit(requests).await })
            .await
            .map_err(|e| SqlError::new("XX000", format!("commit task failed: {e}")))?
            .map_err(from_api)?;
        Ok(Some(ts))
    }
}

impl PendingTable {
    fn live_rows(&self) -> Result<Option<RecordBatch>, SqlError> {
        let live: Vec<Loc> = self.entries.values().filter_map(|e| e.row).collect();
        if live.is_empty() {
            return Ok(None);
        }
        let batches: Vec<&RecordBatch> = self.rows.iter().collect();
        interleave_record_batch(&batches, &live)
            .map(Some)
            .map_err(arrow_err)
    }
}

impl crate::engine::Engine {
    /// `BEGIN` / `START TRANSACTION`: READ COMMITTED, as PostgreSQL's
    /// default; stronger levels are refused rather than silently weakened.
    pub(crate) fn begin(
        &self,
        session: &Session,
        modes: &[sqlparser::ast::TransactionMode],
    ) -> Result<Output, SqlError> {
        use sqlparser::ast::{TransactionIsolationLevel as Level, TransactionMode};
        for mode in modes {
            if let TransactionMode::IsolationLevel(
                level @ (Level::RepeatableRead | Level::Serializable | Level::Snapshot),
            ) = mode
            {
                return Err(SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "transaction isolation level {level} is not supported (Quiver transactions are READ COMMITTED)"
                    ),
                ));
            }
        }
        if session.in_transaction_block() {
            session.warning("25001", "there is already a transaction in progress");
        } else {
            session.set_transaction(TransactionState::Open(Box::default()));
            session.begin_settings_scope();
        }
        Ok(Output::TransactionStart(Tag::new("BEGIN")))
    }

    /// `COMMIT`: writes the transaction's buffer atomically. A failed
    /// block ends as a rollback, as in PostgreSQL.
    pub(crate) async fn commit(&self, session: &Session) -> Result<Output, SqlError> {
        let state = session.set_transaction(TransactionState::Idle);
        match state {
            TransactionState::Open(txn) => {
                let committed = txn.commit(self.backends.streaming.clone()).await;
                // A COMMIT that fails rolls back, SETs included.
                session.end_settings_scope(committed.is_ok());
                match committed {
                    Ok(Some(ts)) => session.record_write(ts),
                    Ok(None) => {}
                    // Nothing was written and the block is over, as in
                    // PostgreSQL: the session is idle (ReadyForQuery says
                    // so, see `ready_status`).
                    Err(e) => return Err(e),
                }
                Ok(Output::TransactionEnd(Tag::new("COMMIT")))
            }
            TransactionState::Failed(_) => {
                session.end_settings_scope(false);
                Ok(Output::TransactionEnd(Tag::new("ROLLBACK")))
            }
            TransactionState::Idle => {
                session.warning("25P01", "there is no transaction in progress");
                Ok(Output::TransactionEnd(Tag::new("COMMIT")))
            }
        }
    }

    /// `SAVEPOINT name` / `RELEASE SAVEPOINT name`.
    pub(crate) fn savepoint(
        &self,
        session: &Session,
        name: &sqlparser::ast::Ident,
        tag: &str,
    ) -> Result<Output, SqlError> {
        let name = identifier(name);
        let Some(mut txn) = session.take_open_transaction() else {
            return Err(SqlError::new(
                "25P01",
                format!("{tag} can only be used in transaction blocks"),
            ));
        };
        let result = if tag == "SAVEPOINT" {
            session.settings_savepoint(&name);
            txn.savepoint(name);
            Ok(())
        } else {
            txn.release(&name)
                .inspect(|()| session.release_settings_savepoint(&name))
        };
        session.set_transaction(TransactionState::Open(txn));
        result.map(|()| Output::Command(Tag::new(tag)))
    }

    /// `ROLLBACK TO SAVEPOINT name`: also revives a failed block.
    pub(crate) fn rollback_to_savepoint(
        &self,
        session: &Session,
        name: &sqlparser::ast::Ident,
    ) -> Result<Output, SqlError> {
        let name = identifier(name);
        let (mut txn, failed) = match session.set_transaction(TransactionState::Idle) {
            TransactionState::Open(txn) => (txn, false),
            TransactionState::Failed(txn) => (txn, true),
            TransactionState::Idle => {
                return Err(SqlError::new(
                    "25P01",
                    "ROLLBACK TO SAVEPOINT can only be used in transaction blocks",
                ));
            }
        };
        match txn.rollback_to(&name) {
            Ok(()) => {
                session.rollback_settings_to(&name);
                session.set_transaction(TransactionState::Open(txn));
                Ok(Output::Command(Tag::new("ROLLBACK")))
            }
            Err(e) => {
                session.set_transaction(if failed {
                    TransactionState::Failed(txn)
                } else {
                    TransactionState::Open(txn)
                });
                Err(e)
            }
        }
    }

    pub(crate) fn rollback(&self, session: &Session) -> Output {
        if let TransactionState::Idle = session.set_transaction(TransactionState::Idle) {
            session.warning("25P01", "there is no transaction in progress");
        }
        session.end_settings_scope(false);
        Output::TransactionEnd(Tag::new("ROLLBACK"))
    }
}

/// An identifier as PostgreSQL folds it: quoted kept, unquoted lower-cased.
fn identifier(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

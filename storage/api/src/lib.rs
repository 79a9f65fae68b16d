//! Role interfaces: what the coordinator, streaming nodes and query nodes do,
//! independent of how they are reached.
//!
//! Standalone mode wires these traits with in-process calls; distributed mode
//! puts a network transport behind the same traits. Every failure crossing a
//! role boundary is an [`ApiError`] carrying a [`StatusCode`], which the
//! frontend turns into a PostgreSQL SQLSTATE.

mod index;

use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use quiver_segment::{DeleteLogEntry, SegmentIndexMeta, SegmentMeta};
use quiver_types::{IndexId, SegmentId, ShardId, TableId, TableSchema, Timestamp};

pub use index::{
    BuildState, CompactionOutput, CompactionTask, DISTANCE_COLUMN, DataApi, IndexBuildStatus,
    IndexBuildTask, IndexDef, IndexInfo, IndexParams, SearchFilter, SearchStrategy,
    SegmentSearchPlan, SegmentSearchResult, VectorSearchRequest, with_distance_column,
};
use serde::{Deserialize, Serialize};

/// Failure classes that cross role boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusCode {
    /// A row's primary key already exists (23505).
    UniqueViolation,
    /// A NULL reached a NOT NULL column (23502).
    NotNullViolation,
    /// Data that violates the column's type rules (22000 / 22P02 family).
    InvalidData,
    UndefinedTable,
    DuplicateTable,
    /// An index name is taken (42P07) or absent (42704).
    DuplicateObject,
    UndefinedObject,
    /// A request the catalog cannot satisfy (e.g. index on a non-vector column).
    InvalidRequest,
    /// The role is not ready, was reassigned, or the connection to it
    /// broke; retrying may succeed.
    Unavailable,
    /// The request never reached the role (nothing listens there, or the
    /// connection could not be made): it did not run, so another process
    /// of the role may take it.
    Unreachable,
    /// The streaming node does not serve the shard (any more): the call did
    /// nothing, and the shard's owner may take it.
    NotOwner,
    /// A write was sent but the connection broke before its answer: it may
    /// or may not have been applied (PostgreSQL's 08007).
    OutcomeUnknown,
    /// Storage (WAL, meta, object store) failed.
    StorageFailure,
    Internal,
}

impl StatusCode {
    /// Unavailable or unreachable: the role did not answer, and retrying
    /// (later, or elsewhere) may succeed.
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            StatusCode::Unavailable | StatusCode::Unreachable | StatusCode::NotOwner
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct ApiError {
    pub code: StatusCode,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// Wraps a lower-level error, keeping its whole source chain in the message.
    pub fn from_error(code: StatusCode, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ApiError { code, message }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A table as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    pub id: TableId,
    pub name: String,
    pub schema: TableSchema,
    pub shards: u32,
    #[serde(default)]
    pub indexes: Vec<IndexInfo>,
}

impl TableInfo {
    /// The index that serves `ORDER BY column <op> q` for this metric.
    pub fn index_for(
        &self,
        column: &str,
        metric: quiver_types::VectorMetric,
    ) -> Option<&IndexInfo> {
        self.indexes
            .iter()
            .find(|i| i.def.column == column && i.def.metric == metric)
    }
}

/// A role made by `CREATE ROLE` / `CREATE USER`, kept by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleInfo {
    pub name: String,
    pub superuser: bool,
    pub login: bool,
    pub create_db: bool,
    pub create_role: bool,
    /// `None`: no password (cannot log in with `scram-sha-256`).
    pub scram: Option<ScramVerifier>,
}

/// What SCRAM-SHA-256 needs to check a password, never the password itself.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ScramVerifier {
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
    pub iterations: u32,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

/// Catalog, timestamp oracle and segment scheduling.
#[async_trait]
pub trait CoordinatorApi: Send + Sync {
    /// A fresh timestamp, larger than every timestamp handed out before
    /// (also across restarts).
    async fn allocate_timestamp(&self) -> ApiResult<Timestamp>;
    /// `count` fresh, never reused segment ids; returns the first.
    async fn allocate_segment_ids(&self, count: u64) -> ApiResult<SegmentId>;
    async fn create_table(
        &self,
        name: &str,
        schema: TableSchema,
        if_not_exists: bool,
    ) -> ApiResult<TableInfo>;
    /// Returns the dropped table, or `None` when it did not exist and `if_exists`.
    async fn drop_table(&self, name: &str, if_exists: bool) -> ApiResult<Option<TableInfo>>;
    fn table(&self, name: &str) -> Option<TableInfo>;
    /// `count` consecutive values of a serial column's sequence (never
    /// handed out before, also across restarts); returns the first.
    async fn next_serial_values(&self, table: TableId, column: &str, count: u64) -> ApiResult<i64>;
    /// The query node serving a segment; `None` while no live node has it.
    fn segment_node(&self, segment: SegmentId) -> Option<Arc<dyn QueryApi>>;
    fn tables(&self) -> Vec<TableInfo>;
    /// A streaming node sealed these segments (already durable in the meta
    /// store); the coordinator assigns them to query nodes and returns once
    /// they can be served.
    async fn segments_sealed(&self, segments: Vec<SegmentMeta>) -> ApiResult<()>;
    /// A streaming node removed these segments from the manifest (TRUNCATE);
    /// their indexes go too.
    async fn segments_dropped(&self, segments: Vec<SegmentMeta>) -> ApiResult<()>;
    /// Records an index and schedules builds for the table's sealed
    /// segments; returns once they are scheduled.
    async fn create_index(
        &self,
        table: &str,
        def: IndexDef,
        if_not_exists: bool,
    ) -> ApiResult<Option<IndexInfo>>;
    /// Returns the dropped index, or `None` when absent and `if_exists`.
    async fn drop_index(&self, name: &str, if_exists: bool) -> ApiResult<Option<IndexInfo>>;
    /// Sealed segments (all tables), for `quiver.segments`.
    fn sealed_segments(&self) -> Vec<SegmentMeta>;
    /// Build status per (index, sealed segment), for `quiver.index_builds`.
    fn index_builds(&self) -> Vec<IndexBuildStatus>;
    /// Runs a compaction's merge on a data node.
    async fn compact(&self, task: CompactionTask) -> ApiResult<CompactionOutput>;
    /// Creates a role; `Ok(false)` when it exists and `if_not_exists`.
    async fn create_role(&self, role: RoleInfo, if_not_exists: bool) -> ApiResult<bool>;
    /// Replaces an existing role's attributes.
    async fn alter_role(&self, role: RoleInfo) -> ApiResult<()>;
    /// Drops a role; `Ok(false)` when absent and `if_exists`.
    async fn drop_role(&self, name: &str, if_exists: bool) -> ApiResult<bool>;
    fn role(&self, name: &str) -> Option<RoleInfo>;
    fn roles(&self) -> Vec<RoleInfo>;
    /// Brings the catalog this handle answers from (`table`, `tables`,
    /// `role`, `segment_node`, ...) up to date with the coordinator. A
    /// remote handle keeps a copy that follows the coordinator a few
    /// milliseconds behind; callers refresh when a name is missing, since it
    /// may have been created through another proxy a moment ago.
    async fn refresh_catalog(&self) -> ApiResult<()> {
        Ok(())
    }
}

/// How an insert treats rows whose primary key already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictPolicy {
    /// Fail the whole write with [`StatusCode::UniqueViolation`].
    Error,
    /// Skip the conflicting rows (`ON CONFLICT DO NOTHING`).
    Skip,
    /// Replace the existing rows (`ON CONFLICT DO UPDATE` after the proxy
    /// computed the merged rows).
    Replace,
}

/// One statement's change to one table, before sharding.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub table: TableInfo,
    /// Primary keys (key columns only) to delete first.
    pub delete_keys: Option<RecordBatch>,
    /// Rows to insert (all user columns, validated by the proxy).
    pub insert: Option<RecordBatch>,
    pub on_conflict: ConflictPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WriteResult {
    /// Commit timestamp of the write.
    pub ts: Timestamp,
    /// Number of existing rows deleted (by `delete_keys` or replaced).
    pub deleted: u64,
    /// Indexes (into the request's insert batch) of the rows inserted, ascending.
    pub inserted_rows: Vec<u32>,
}

/// What a shard holds for a table at a snapshot.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// Visible rows of growing segments (user columns only).
    pub growing: Vec<RecordBatch>,
    /// Sealed segments to read from query nodes, with the deletes the
    /// streaming node knows for them.
    pub sealed: Vec<SealedSegmentRef>,
}

#[derive(Debug, Clone)]
pub struct SealedSegmentRef {
    pub segment: SegmentId,
    pub deletes: Arc<Vec<DeleteLogEntry>>,
}

/// Owns shards: the WAL, growing segments, sealing and flushing.
#[async_trait]
pub trait StreamingApi: Send + Sync {
    /// Validates, timestamps, logs durably and applies one write; returns
    /// after the WAL append is durable.
    async fn write(&self, request: WriteRequest) -> ApiResult<WriteResult>;
    /// A transaction's writes (at most one request per table) at one
    /// commit timestamp: all become visible together, and after a crash all
    /// or none of them are there. Returns the commit timestamp.
    async fn commit(&self, requests: Vec<WriteRequest>) -> ApiResult<Timestamp>;
    /// For each key (key columns only), whether a live row has it now:
    /// lets a transaction report a duplicate key at the INSERT that makes
    /// it rather than at COMMIT.
    async fn existing_keys(&self, table: &TableInfo, keys: RecordBatch) -> ApiResult<Vec<bool>>;
    /// Removes every row of the table (TRUNCATE); returns the commit timestamp.
    async fn truncate(&self, table: &TableInfo) -> ApiResult<Timestamp>;
    /// Waits until every shard has applied everything up to `ts`, then
    /// returns the snapshot timestamp to read at (≥ `ts`).
    async fn wait_applied(&self, ts: Timestamp) -> ApiResult<Timestamp>;
    /// The latest snapshot timestamp that needs no waiting.
    async fn applied_ts(&self) -> ApiResult<Timestamp>;
    /// A snapshot timestamp covering every write acknowledged so far, by
    /// any session: the newest tick of any shard, once every shard has
    /// applied up to it. PostgreSQL's read-committed visibility, without a
    /// trip to the timestamp oracle.
    async fn acknowledged_ts(&self) -> ApiResult<Timestamp>;
    async fn snapshot(
        &self,
        table: &TableInfo,
        shard: ShardId,
        ts: Timestamp,
    ) -> ApiResult<ShardSnapshot>;
    /// Seals and flushes every growing segment (`CHECKPOINT`).
    async fn flush_all(&self) -> ApiResult<()>;
    /// Compacts the sealed segments of `table` (all tables if `None`):
    /// merges undersized ones and rewrites those with deleted rows
    /// (`VACUUM`). Returns the number of segments replaced.
    async fn compact(&self, table: Option<&TableInfo>) -> ApiResult<usize>;
}

/// Serves sealed segments from object storage.
#[async_trait]
pub trait QueryApi: Send + Sync {
    /// Names the node for people (`quiver.segments`, logs): its address
    /// when remote.
    fn label(&self) -> String;
    /// Identifies this run of the node: a new value means it restarted and
    /// lost what was loaded into it. Fails when the node is unreachable.
    async fn incarnation(&self) -> ApiResult<u64>;
    async fn load_segments(&self, segments: Vec<SegmentMeta>) -> ApiResult<()>;
    async fn release_segments(&self, segments: Vec<SegmentId>) -> ApiResult<()>;
    /// A segment index was built; serve searches from it (files are fetched
    /// into the local cache on first use).
    async fn load_index(&self, index: SegmentIndexMeta) -> ApiResult<()>;
    async fn release_index(&self, segment: SegmentId, index: IndexId) -> ApiResult<()>;
    /// The top-k visible rows of a sealed segment for a vector search.
    async fn search_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchResult>;
    /// Searches several of this node's segments for one request: one
    /// result per segment, in order. A remote node answers in one round
    /// trip.
    async fn search_segments(
        &self,
        segments: &[SealedSegmentRef],
        ts: Timestamp,
        request: &VectorSearchRequest,
    ) -> ApiResult<Vec<SegmentSearchResult>> {
        futures::future::try_join_all(
            segments
                .iter()
                .map(|s| self.search_segment(s.segment, ts, &s.deletes, request)),
        )
        .await
    }
    /// How `search_segment` would search the segment, without searching.
    async fn explain_search(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchPlan>;
    /// Rows of a sealed segment visible at `ts`, given its deletes: the
    /// `projection` user columns, or all.
    async fn scan_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        projection: Option<&[usize]>,
    ) -> ApiResult<Vec<RecordBatch>>;
}

/// The shards a streaming node waited on and the timestamp they all
/// applied up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    pub shards: Vec<u32>,
    pub ts: Timestamp,
}

/// A change prepared on one participant of a commit that spans several
/// streaming nodes.
#[derive(Debug, Clone)]
pub enum PreparedChange {
    /// Writes (at most one request per table) of rows in the named shards.
    Writes(Vec<WriteRequest>),
    /// Removes every row of the table in the named shards.
    Truncate(TableInfo),
}

/// A streaming node as one of several sharing a cluster's shards. A
/// statement whose shards one node owns goes to it through
/// [`StreamingApi`]; one spanning several nodes commits in three steps
/// driven by the proxy: [`Self::prepare`] on every participant (locks and
/// key checks), one commit timestamp, [`Self::log_prepared`] on every
/// participant (durable, not applied), then [`Self::finish_prepared`].
/// The outcome is one key in the meta store, created once by the first
/// participant (or recovery) that decides, so a proxy dying halfway never
/// leaves some shards applied and others not.
#[async_trait]
pub trait ShardOwnerApi: StreamingApi {
    /// Names the node (its address when remote). Proxies prepare a commit
    /// on its nodes in the order of these names, so two commits never wait
    /// for each other's locks in a cycle.
    fn label(&self) -> String;
    /// The shards this node serves now, ascending.
    async fn owned_shards(&self) -> ApiResult<Vec<u32>>;
    /// Waits until the shards this node owns applied everything up to
    /// `until` (without it: up to the newest of their ticks, which covers
    /// every write they acknowledged), and says which shards those were.
    /// A proxy whose idea of the owners is stale learns so from a shard
    /// nobody reported.
    async fn applied_report(&self, until: Option<Timestamp>) -> ApiResult<AppliedReport>;
    /// Locks `shards` (all owned here, else [`StatusCode::NotOwner`])
    /// and checks the change against their keys; holds the locks for
    /// `txn`. Returns, per request, the rows deleted and inserted (indexes
    /// into that request's batch). A participant that hears nothing more
    /// for a while gives the change up (aborting it, if logged).
    async fn prepare(
        &self,
        txn: u64,
        shards: Vec<u32>,
        change: PreparedChange,
    ) -> ApiResult<Vec<WriteResult>>;
    /// Makes the prepared change durable at `ts`, naming every shard of
    /// the commit; nothing is applied yet.
    async fn log_prepared(&self, txn: u64, ts: Timestamp, participants: Vec<u32>) -> ApiResult<()>;
    /// Decides the commit (`commit` only after every participant logged
    /// its part) unless it is decided already, applies it if it committed,
    /// and releases the locks. Returns whether it committed.
    async fn finish_prepared(&self, txn: u64, commit: bool) -> ApiResult<bool>;
}

//! What travels between role processes: Flight action names, JSON bodies of
//! control calls and the tickets of batch-returning calls.

use quiver_api::{SearchStrategy, VectorSearchRequest};
use quiver_segment::DeleteLogEntry;
use quiver_types::{IndexId, SegmentId, Timestamp, VectorMetric};
use serde::{Deserialize, Serialize};

use crate::filter::WireFilter;

pub const NODE_STATUS: &str = "node.status";
pub const QUERY_LOAD_SEGMENTS: &str = "query.load_segments";
pub const QUERY_RELEASE_SEGMENTS: &str = "query.release_segments";
pub const QUERY_LOAD_INDEX: &str = "query.load_index";
pub const QUERY_RELEASE_INDEX: &str = "query.release_index";
pub const QUERY_EXPLAIN_SEARCH: &str = "query.explain_search";
pub const DATA_BUILD_INDEX: &str = "data.build_index";
pub const DATA_COMPACT: &str = "data.compact";

/// What a node says about itself when probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Random per process start: a changed value means the node restarted
    /// and lost whatever was loaded into it.
    pub incarnation: u64,
    /// The roles this process serves (`query`, `data`).
    pub roles: Vec<String>,
}

/// Tickets of `DoGet`, the calls that return record batches.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ticket {
    Search(SearchCall),
    SearchMany(SearchManyCall),
    Scan(ScanCall),
    /// A shard's growing rows and sealed segments (streaming node).
    Snapshot(SnapshotCall),
}

impl Ticket {
    pub fn name(&self) -> &'static str {
        match self {
            Ticket::Search(_) => "query.search_segment",
            Ticket::SearchMany(_) => "query.search_segments",
            Ticket::Scan(_) => "query.scan_segment",
            Ticket::Snapshot(_) => "streaming.snapshot",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SearchCall {
    pub segment: SegmentId,
    pub ts: Timestamp,
    pub deletes: Vec<DeleteLogEntry>,
    pub request: WireSearchRequest,
}

/// Several segments of one node, one request: the rows of all results
/// travel as one batch, split again by the outcomes' row counts.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchManyCall {
    pub ts: Timestamp,
    pub segments: Vec<(SegmentId, Vec<DeleteLogEntry>)>,
    pub request: WireSearchRequest,
}

/// `explain_search` takes the same arguments as a search.
pub type ExplainCall = SearchCall;

#[derive(Debug, Serialize, Deserialize)]
pub struct ScanCall {
    pub segment: SegmentId,
    pub ts: Timestamp,
    pub deletes: Vec<DeleteLogEntry>,
    pub projection: Option<Vec<usize>>,
}

/// [`VectorSearchRequest`] with its filter encoded.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireSearchRequest {
    pub column: usize,
    pub metric: VectorMetric,
    pub query: Vec<f32>,
    pub k: usize,
    pub search_list: usize,
    pub index: Option<IndexId>,
    pub filter: Option<WireFilter>,
    #[serde(default)]
    pub projection_with_distance: Option<Vec<usize>>,
}

impl WireSearchRequest {
    pub fn encode(request: &VectorSearchRequest) -> quiver_api::ApiResult<Self> {
        Ok(WireSearchRequest {
            column: request.column,
            metric: request.metric,
            query: request.query.as_ref().clone(),
            k: request.k,
            search_list: request.search_list,
            index: request.index,
            filter: request
                .filter
                .as_ref()
                .map(WireFilter::encode)
                .transpose()?,
            projection_with_distance: request.projection_with_distance.clone(),
        })
    }
}

/// Sent in the schema message of a search's `DoGet` stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchOutcome {
    pub strategy: SearchStrategy,
    pub matching: u64,
    /// Rows of this result in the concatenated batch (`SearchMany`).
    #[serde(default)]
    pub rows: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseIndexCall {
    pub segment: SegmentId,
    pub index: IndexId,
}

/// Every action, for `ListActions`.
pub const ALL_ACTIONS: &[&str] = &[
    NODE_STATUS,
    QUERY_LOAD_SEGMENTS,
    QUERY_RELEASE_SEGMENTS,
    QUERY_LOAD_INDEX,
    QUERY_RELEASE_INDEX,
    QUERY_EXPLAIN_SEARCH,
    DATA_BUILD_INDEX,
    DATA_COMPACT,
    COORD_ALLOCATE_TIMESTAMP,
    COORD_ALLOCATE_SEGMENT_IDS,
    COORD_CREATE_TABLE,
    COORD_DROP_TABLE,
    COORD_NEXT_SERIAL_VALUES,
    COORD_SEGMENTS_SEALED,
    COORD_SEGMENTS_DROPPED,
    COORD_CREATE_INDEX,
    COORD_DROP_INDEX,
    COORD_COMPACT,
    COORD_CREATE_ROLE,
    COORD_ALTER_ROLE,
    COORD_DROP_ROLE,
    COORD_CATALOG,
    STREAM_WRITE,
    STREAM_COMMIT,
    STREAM_EXISTING_KEYS,
    STREAM_TRUNCATE,
    STREAM_WAIT_APPLIED,
    STREAM_APPLIED_TS,
    STREAM_FLUSH_ALL,
    STREAM_COMPACT,
    STREAM_OWNED_SHARDS,
    STREAM_PREPARE,
    STREAM_LOG_PREPARED,
    STREAM_FINISH_PREPARED,
    STREAM_APPLIED_REPORT,
];

pub const COORD_ALLOCATE_TIMESTAMP: &str = "coord.allocate_timestamp";
pub const COORD_ALLOCATE_SEGMENT_IDS: &str = "coord.allocate_segment_ids";
pub const COORD_CREATE_TABLE: &str = "coord.create_table";
pub const COORD_DROP_TABLE: &str = "coord.drop_table";
pub const COORD_NEXT_SERIAL_VALUES: &str = "coord.next_serial_values";
pub const COORD_SEGMENTS_SEALED: &str = "coord.segments_sealed";
pub const COORD_SEGMENTS_DROPPED: &str = "coord.segments_dropped";
pub const COORD_CREATE_INDEX: &str = "coord.create_index";
pub const COORD_DROP_INDEX: &str = "coord.drop_index";
pub const COORD_COMPACT: &str = "coord.compact";
pub const COORD_CREATE_ROLE: &str = "coord.create_role";
pub const COORD_ALTER_ROLE: &str = "coord.alter_role";
pub const COORD_DROP_ROLE: &str = "coord.drop_role";
pub const COORD_CATALOG: &str = "coord.catalog";

pub const STREAM_WRITE: &str = "streaming.write";
pub const STREAM_COMMIT: &str = "streaming.commit";
pub const STREAM_EXISTING_KEYS: &str = "streaming.existing_keys";
pub const STREAM_TRUNCATE: &str = "streaming.truncate";
pub const STREAM_WAIT_APPLIED: &str = "streaming.wait_applied";
pub const STREAM_APPLIED_TS: &str = "streaming.applied_ts";
pub const STREAM_ACKNOWLEDGED_TS: &str = "streaming.acknowledged_ts";
pub const STREAM_FLUSH_ALL: &str = "streaming.flush_all";
pub const STREAM_COMPACT: &str = "streaming.compact";
pub const STREAM_OWNED_SHARDS: &str = "streaming.owned_shards";
pub const STREAM_PREPARE: &str = "streaming.prepare";
pub const STREAM_LOG_PREPARED: &str = "streaming.log_prepared";
pub const STREAM_FINISH_PREPARED: &str = "streaming.finish_prepared";
pub const STREAM_APPLIED_REPORT: &str = "streaming.applied_report";

/// The JSON part of a framed prepare: the writes' batches follow as in a
/// framed write (none for a truncate).
#[derive(Debug, Serialize, Deserialize)]
pub struct PrepareHeader {
    pub txn: u64,
    pub shards: Vec<u32>,
    /// Set for a truncate of this table; otherwise `writes` lists the
    /// requests.
    pub truncate: Option<quiver_api::TableInfo>,
    pub writes: Vec<WriteHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LogPreparedCall {
    pub txn: u64,
    pub ts: Timestamp,
    pub participants: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FinishPreparedCall {
    pub txn: u64,
    pub commit: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateTableCall {
    pub name: String,
    pub schema: quiver_types::TableSchema,
    pub if_not_exists: bool,
}

/// Dropping a table, index or role by name.
#[derive(Debug, Serialize, Deserialize)]
pub struct DropCall {
    pub name: String,
    pub if_exists: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SerialValuesCall {
    pub table: quiver_types::TableId,
    pub column: String,
    pub count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateIndexCall {
    pub table: String,
    pub def: quiver_api::IndexDef,
    pub if_not_exists: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRoleCall {
    pub role: quiver_api::RoleInfo,
    pub if_not_exists: bool,
}

/// The JSON part of a framed write (`crate::frame`): the batches follow,
/// keys to delete then rows to insert, per request.
#[derive(Debug, Serialize, Deserialize)]
pub struct WriteHeader {
    pub table: quiver_api::TableInfo,
    pub on_conflict: quiver_api::ConflictPolicy,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotCall {
    pub table: quiver_api::TableInfo,
    pub shard: quiver_types::ShardId,
    pub ts: Timestamp,
}

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
}

impl Ticket {
    pub fn name(&self) -> &'static str {
        match self {
            Ticket::Search(_) => "query.search_segment",
            Ticket::SearchMany(_) => "query.search_segments",
            Ticket::Scan(_) => "query.scan_segment",
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

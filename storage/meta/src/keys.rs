//! The meta-store key layout, in one place so every role agrees on it.

use quiver_types::{IndexId, SegmentId, TableId};

pub const TABLES: &str = "/catalog/tables/";
pub const NEXT_TABLE_ID: &str = "/catalog/next_table_id";
pub const TSO_LIMIT: &str = "/tso/limit_ms";
pub const SEGMENT_ID_LIMIT: &str = "/ids/segment_limit";
pub const SEGMENTS: &str = "/segments/";

pub fn table(name: &str) -> String {
    format!("{TABLES}{name}")
}

pub fn table_segments(table: TableId) -> String {
    format!("{SEGMENTS}{:016}/", table.0)
}

pub fn segment(table: TableId, segment: SegmentId) -> String {
    format!("{SEGMENTS}{:016}/{:016}", table.0, segment.0)
}

/// The WAL position from which a channel must be replayed after a restart.
pub fn channel_checkpoint(channel: u32) -> String {
    format!("/channels/{channel:04}/checkpoint")
}

/// The commit timestamp up to which a channel's applied records are sealed
/// (written with its checkpoint); recovery uses it to tell whether another
/// channel's part of a multi-shard statement was durable.
pub fn channel_flushed_ts(channel: u32) -> String {
    format!("/channels/{channel:04}/flushed_ts")
}

/// Multi-shard statements that must never be applied (one shard's part was
/// not durable), by commit timestamp. Recovery skips their records.
pub const ABORTED_STATEMENTS: &str = "/aborted/";

pub fn aborted_statement(ts: quiver_types::Timestamp) -> String {
    format!("{ABORTED_STATEMENTS}{:020}", ts.0)
}

pub const NEXT_INDEX_ID: &str = "/catalog/next_index_id";

/// Built segment indexes: `/segment_indexes/{table}/{segment}/{index}`.
pub const SEGMENT_INDEXES: &str = "/segment_indexes/";

pub fn table_segment_indexes(table: TableId) -> String {
    format!("{SEGMENT_INDEXES}{:016}/", table.0)
}

pub fn segment_indexes(table: TableId, segment: SegmentId) -> String {
    format!("{SEGMENT_INDEXES}{:016}/{:016}/", table.0, segment.0)
}

pub fn segment_index(table: TableId, segment: SegmentId, index: IndexId) -> String {
    format!(
        "{SEGMENT_INDEXES}{:016}/{:016}/{:016}",
        table.0, segment.0, index.0
    )
}

/// Serial columns' sequences: `/sequences/{table}/{column}` holds the value
/// below which every number may already have been handed out.
pub const SEQUENCES: &str = "/sequences/";

pub fn table_sequences(table: TableId) -> String {
    format!("{SEQUENCES}{:016}/", table.0)
}

pub fn sequence(table: TableId, column: &str) -> String {
    format!("{SEQUENCES}{:016}/{column}", table.0)
}

/// Roles made by `CREATE ROLE`: `/roles/{name}`.
pub const ROLES: &str = "/roles/";
/// Held (leased) by the coordinator that leads; its value is the leader's
/// address.
pub const COORDINATOR_LEADER: &str = "/election/coordinator";

pub fn role(name: &str) -> String {
    format!("{ROLES}{name}")
}

/// Registered query-node processes, by address (leased: they vanish when a
/// node stops renewing them).
pub const QUERY_NODES: &str = "/nodes/query/";

pub fn query_node(address: &str) -> String {
    format!("{QUERY_NODES}{address}")
}

/// Registered data-node processes, by address (leased like query nodes).
pub const DATA_NODES: &str = "/nodes/data/";

pub fn data_node(address: &str) -> String {
    format!("{DATA_NODES}{address}")
}

/// Outcomes of statements that span several streaming nodes, by commit
/// timestamp: `commit` or `abort`, created once and never changed, by the
/// first participant (or recovery) to decide.
pub const OUTCOMES: &str = "/outcomes/";

pub fn outcome(ts: quiver_types::Timestamp) -> String {
    format!("{OUTCOMES}{:020}", ts.0)
}

/// Registered streaming-node processes, by address (leased like query
/// nodes): the shards are spread over the ones registered here.
pub const STREAMING_NODES: &str = "/nodes/streaming/";

pub fn streaming_node(address: &str) -> String {
    format!("{STREAMING_NODES}{address}")
}

/// Held (leased) by the streaming node serving a shard; its value is that
/// node's address. Only the holder writes the shard's WAL and manifests.
pub fn shard_owner(shard: u32) -> String {
    format!("/shards/{shard:04}/owner")
}

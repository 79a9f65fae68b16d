//! The streaming node as seen from a proxy in another process: the active
//! one among the configured streaming-node processes (standbys do not
//! listen until they take over).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use quiver_api::{
    ApiError, ApiResult, SealedSegmentRef, ShardSnapshot, StatusCode, StreamingApi, TableInfo,
    WriteRequest, WriteResult,
};
use quiver_segment::DeleteLogEntry;
use quiver_types::{SegmentId, ShardId, Timestamp};

use crate::client::internal;
use crate::failover::{FailoverClient, Retry};
use crate::frame;
use crate::wire::{self, SnapshotCall, Ticket, WriteHeader};

#[derive(Debug)]
pub struct RemoteStreamingNode {
    nodes: FailoverClient,
}

impl RemoteStreamingNode {
    /// The streaming node active among `addresses`, as the role trait
    /// (connects lazily).
    pub fn connect(addresses: &[String]) -> ApiResult<Arc<dyn StreamingApi>> {
        Ok(Arc::new(RemoteStreamingNode {
            nodes: FailoverClient::new(addresses, "[cluster] streaming_nodes")?,
        }))
    }
}

/// A write whose connection broke after it was sent may have been
/// applied: the client must learn that, not that it may simply retry.
fn outcome_unknown(e: ApiError) -> ApiError {
    if e.code == StatusCode::Unavailable {
        ApiError::new(
            StatusCode::OutcomeUnknown,
            format!("the write may or may not have been applied: {}", e.message),
        )
    } else {
        e
    }
}

fn encode_writes(requests: &[WriteRequest]) -> ApiResult<Vec<u8>> {
    let headers: Vec<WriteHeader> = requests
        .iter()
        .map(|r| WriteHeader {
            table: r.table.clone(),
            on_conflict: r.on_conflict,
        })
        .collect();
    let batches: Vec<Option<&RecordBatch>> = requests
        .iter()
        .flat_map(|r| [r.delete_keys.as_ref(), r.insert.as_ref()])
        .collect();
    frame::encode(&headers, &batches)
}

#[async_trait]
impl StreamingApi for RemoteStreamingNode {
    async fn write(&self, request: WriteRequest) -> ApiResult<WriteResult> {
        let body = encode_writes(std::slice::from_ref(&request))?;
        self.nodes
            .action_body(wire::STREAM_WRITE, body, Retry::Once)
            .await
            .map_err(outcome_unknown)
    }

    async fn commit(&self, requests: Vec<WriteRequest>) -> ApiResult<Timestamp> {
        let body = encode_writes(&requests)?;
        self.nodes
            .action_body(wire::STREAM_COMMIT, body, Retry::Once)
            .await
            .map_err(outcome_unknown)
    }

    async fn existing_keys(&self, table: &TableInfo, keys: RecordBatch) -> ApiResult<Vec<bool>> {
        let body = frame::encode(table, &[Some(&keys)])?;
        self.nodes
            .action_body(wire::STREAM_EXISTING_KEYS, body, Retry::Idempotent)
            .await
    }

    async fn truncate(&self, table: &TableInfo) -> ApiResult<Timestamp> {
        self.nodes
            .action(wire::STREAM_TRUNCATE, table, Retry::Once)
            .await
            .map_err(outcome_unknown)
    }

    async fn wait_applied(&self, ts: Timestamp) -> ApiResult<Timestamp> {
        self.nodes
            .action(wire::STREAM_WAIT_APPLIED, &ts, Retry::Idempotent)
            .await
    }

    async fn applied_ts(&self) -> ApiResult<Timestamp> {
        self.nodes
            .action(wire::STREAM_APPLIED_TS, &(), Retry::Idempotent)
            .await
    }

    async fn acknowledged_ts(&self) -> ApiResult<Timestamp> {
        self.nodes
            .action(wire::STREAM_ACKNOWLEDGED_TS, &(), Retry::Idempotent)
            .await
    }

    async fn snapshot(
        &self,
        table: &TableInfo,
        shard: ShardId,
        ts: Timestamp,
    ) -> ApiResult<ShardSnapshot> {
        let call = Ticket::Snapshot(SnapshotCall {
            table: table.clone(),
            shard,
            ts,
        });
        let call = &call;
        let (growing, _schema, meta) = self
            .nodes
            .call(
                Retry::Idempotent,
                |node| async move { node.get(call).await },
            )
            .await?;
        let sealed: Vec<(SegmentId, Vec<DeleteLogEntry>)> = if meta.is_empty() {
            // The server always sends the metadata; an empty one is only
            // possible from a server that has nothing to report.
            Vec::new()
        } else {
            serde_json::from_slice(&meta).map_err(|e| internal(&e))?
        };
        Ok(ShardSnapshot {
            growing,
            sealed: sealed
                .into_iter()
                .map(|(segment, deletes)| SealedSegmentRef {
                    segment,
                    deletes: Arc::new(deletes),
                })
                .collect(),
        })
    }

    async fn flush_all(&self) -> ApiResult<()> {
        self.nodes
            .action(wire::STREAM_FLUSH_ALL, &(), Retry::Idempotent)
            .await
    }

    async fn compact(&self, table: Option<&TableInfo>) -> ApiResult<usize> {
        self.nodes
            .action(wire::STREAM_COMPACT, &table, Retry::Once)
            .await
    }
}

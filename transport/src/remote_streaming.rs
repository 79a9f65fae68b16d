//! One streaming-node process as seen from a proxy: the role traits over
//! its gRPC/Flight service. A proxy holds one per configured streaming
//! node and routes each call to the node owning the shard it is about
//! (`quiver_streaming::router::ShardRouter`).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use quiver_api::{
    ApiError, ApiResult, AppliedReport, PreparedChange, SealedSegmentRef, ShardOwnerApi,
    ShardSnapshot, StatusCode, StreamingApi, TableInfo, WriteRequest, WriteResult,
};
use quiver_segment::DeleteLogEntry;
use quiver_types::{SegmentId, ShardId, Timestamp};

use crate::client::{NodeClient, internal};
use crate::frame;
use crate::wire::{
    self, FinishPreparedCall, LogPreparedCall, PrepareHeader, SnapshotCall, Ticket, WriteHeader,
};

#[derive(Debug)]
pub struct RemoteStreamingNode {
    node: NodeClient,
}

impl RemoteStreamingNode {
    /// Every streaming node at `addresses`, as shard owners (connects
    /// lazily).
    pub fn connect_all(addresses: &[String]) -> ApiResult<Vec<Arc<dyn ShardOwnerApi>>> {
        if addresses.is_empty() {
            return Err(ApiError::new(
                StatusCode::InvalidRequest,
                "no address configured in [cluster] streaming_nodes",
            ));
        }
        addresses
            .iter()
            .map(|a| {
                let node = NodeClient::new(a)?;
                Ok(Arc::new(RemoteStreamingNode { node }) as Arc<dyn ShardOwnerApi>)
            })
            .collect()
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

fn write_headers(requests: &[WriteRequest]) -> Vec<WriteHeader> {
    requests
        .iter()
        .map(|r| WriteHeader {
            table: r.table.clone(),
            on_conflict: r.on_conflict,
        })
        .collect()
}

fn write_batches(requests: &[WriteRequest]) -> Vec<Option<&RecordBatch>> {
    requests
        .iter()
        .flat_map(|r| [r.delete_keys.as_ref(), r.insert.as_ref()])
        .collect()
}

fn encode_writes(requests: &[WriteRequest]) -> ApiResult<Vec<u8>> {
    frame::encode(&write_headers(requests), &write_batches(requests))
}

#[async_trait]
impl StreamingApi for RemoteStreamingNode {
    async fn write(&self, request: WriteRequest) -> ApiResult<WriteResult> {
        let body = encode_writes(std::slice::from_ref(&request))?;
        self.node
            .action_body(wire::STREAM_WRITE, body)
            .await
            .map_err(outcome_unknown)
    }

    async fn commit(&self, requests: Vec<WriteRequest>) -> ApiResult<Timestamp> {
        let body = encode_writes(&requests)?;
        self.node
            .action_body(wire::STREAM_COMMIT, body)
            .await
            .map_err(outcome_unknown)
    }

    async fn existing_keys(&self, table: &TableInfo, keys: RecordBatch) -> ApiResult<Vec<bool>> {
        let body = frame::encode(table, &[Some(&keys)])?;
        self.node
            .action_body(wire::STREAM_EXISTING_KEYS, body)
            .await
    }

    async fn truncate(&self, table: &TableInfo) -> ApiResult<Timestamp> {
        self.node
            .action(wire::STREAM_TRUNCATE, table)
            .await
            .map_err(outcome_unknown)
    }

    async fn wait_applied(&self, ts: Timestamp) -> ApiResult<Timestamp> {
        self.node.action(wire::STREAM_WAIT_APPLIED, &ts).await
    }

    async fn applied_ts(&self) -> ApiResult<Timestamp> {
        self.node.action(wire::STREAM_APPLIED_TS, &()).await
    }

    async fn acknowledged_ts(&self) -> ApiResult<Timestamp> {
        self.node.action(wire::STREAM_ACKNOWLEDGED_TS, &()).await
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
        let (growing, _schema, meta) = self.node.get(&call).await?;
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
        self.node.action(wire::STREAM_FLUSH_ALL, &()).await
    }

    async fn compact(&self, table: Option<&TableInfo>) -> ApiResult<usize> {
        self.node.action(wire::STREAM_COMPACT, &table).await
    }
}

#[async_trait]
impl ShardOwnerApi for RemoteStreamingNode {
    fn label(&self) -> String {
        self.node.endpoint().to_string()
    }

    async fn owned_shards(&self) -> ApiResult<Vec<u32>> {
        self.node.action(wire::STREAM_OWNED_SHARDS, &()).await
    }

    async fn applied_report(&self, until: Option<Timestamp>) -> ApiResult<AppliedReport> {
        self.node.action(wire::STREAM_APPLIED_REPORT, &until).await
    }

    async fn prepare(
        &self,
        txn: u64,
        shards: Vec<u32>,
        change: PreparedChange,
    ) -> ApiResult<Vec<WriteResult>> {
        let body = match &change {
            PreparedChange::Writes(requests) => frame::encode(
                &PrepareHeader {
                    txn,
                    shards,
                    truncate: None,
                    writes: write_headers(requests),
                },
                &write_batches(requests),
            )?,
            PreparedChange::Truncate(table) => frame::encode(
                &PrepareHeader {
                    txn,
                    shards,
                    truncate: Some(table.clone()),
                    writes: Vec::new(),
                },
                &[],
            )?,
        };
        self.node.action_body(wire::STREAM_PREPARE, body).await
    }

    async fn log_prepared(&self, txn: u64, ts: Timestamp, participants: Vec<u32>) -> ApiResult<()> {
        let call = LogPreparedCall {
            txn,
            ts,
            participants,
        };
        self.node.action(wire::STREAM_LOG_PREPARED, &call).await
    }

    async fn finish_prepared(&self, txn: u64, commit: bool) -> ApiResult<bool> {
        let call = FinishPreparedCall { txn, commit };
        self.node.action(wire::STREAM_FINISH_PREPARED, &call).await
    }
}

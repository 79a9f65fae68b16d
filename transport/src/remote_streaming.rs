//! The streaming node as seen from a proxy in another process.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use quiver_api::{
    ApiResult, SealedSegmentRef, ShardSnapshot, StreamingApi, TableInfo, WriteRequest, WriteResult,
};
use quiver_segment::DeleteLogEntry;
use quiver_types::{SegmentId, ShardId, Timestamp};

use crate::client::{NodeClient, internal};
use crate::wire::{self, SnapshotCall, Ticket, WriteHeader};
use crate::{TransportError, frame};

#[derive(Debug, Clone)]
pub struct RemoteStreamingNode {
    client: NodeClient,
}

impl RemoteStreamingNode {
    /// The streaming node at `address`, as the role trait (connects lazily).
    pub fn connect(address: &str) -> Result<Arc<dyn StreamingApi>, TransportError> {
        Ok(Arc::new(RemoteStreamingNode {
            client: NodeClient::new(address)?,
        }))
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
        self.client.action_body(wire::STREAM_WRITE, body).await
    }

    async fn commit(&self, requests: Vec<WriteRequest>) -> ApiResult<Timestamp> {
        let body = encode_writes(&requests)?;
        self.client.action_body(wire::STREAM_COMMIT, body).await
    }

    async fn existing_keys(&self, table: &TableInfo, keys: RecordBatch) -> ApiResult<Vec<bool>> {
        let body = frame::encode(table, &[Some(&keys)])?;
        self.client
            .action_body(wire::STREAM_EXISTING_KEYS, body)
            .await
    }

    async fn truncate(&self, table: &TableInfo) -> ApiResult<Timestamp> {
        self.client.action(wire::STREAM_TRUNCATE, table).await
    }

    async fn wait_applied(&self, ts: Timestamp) -> ApiResult<Timestamp> {
        self.client.action(wire::STREAM_WAIT_APPLIED, &ts).await
    }

    async fn applied_ts(&self) -> ApiResult<Timestamp> {
        self.client.action(wire::STREAM_APPLIED_TS, &()).await
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
        let (growing, _schema, meta) = self.client.get(&call).await?;
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
        self.client.action(wire::STREAM_FLUSH_ALL, &()).await
    }

    async fn compact(&self, table: Option<&TableInfo>) -> ApiResult<usize> {
        self.client.action(wire::STREAM_COMPACT, &table).await
    }
}

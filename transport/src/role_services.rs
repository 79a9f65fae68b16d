//! Serving the coordinator and streaming roles: each action decoded, run
//! against the role trait and its reply encoded. Query and data node calls
//! live in `server.rs`.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use quiver_api::{
    ApiError, ApiResult, CoordinatorApi, PreparedChange, ShardOwnerApi, StatusCode, TableInfo,
    WriteRequest,
};
use quiver_segment::SegmentMeta;
use tonic::Status;

use crate::catalog::{CatalogPoll, CatalogPublisher};
use crate::frame;
use crate::server::{parse, reply, unknown_action};
use crate::status::{bad_request, to_status};
use crate::wire::{self, PrepareHeader, WriteHeader};

/// The coordinator as served: the role plus the catalog it publishes.
pub struct CoordinatorService {
    pub coordinator: Arc<dyn CoordinatorApi>,
    pub catalog: Arc<CatalogPublisher>,
}

impl CoordinatorService {
    pub fn new(coordinator: Arc<dyn CoordinatorApi>, term: u64) -> Self {
        CoordinatorService {
            catalog: CatalogPublisher::start(coordinator.clone(), term),
            coordinator,
        }
    }

    pub async fn action(&self, kind: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
        let c = &self.coordinator;
        match kind {
            wire::COORD_ALLOCATE_TIMESTAMP => reply(c.allocate_timestamp().await),
            wire::COORD_ALLOCATE_SEGMENT_IDS => match parse::<u64>(body) {
                Ok(count) => reply(c.allocate_segment_ids(count).await),
                Err(e) => Err(e),
            },
            wire::COORD_NEXT_SERIAL_VALUES => match parse::<wire::SerialValuesCall>(body) {
                Ok(call) => reply(
                    c.next_serial_values(call.table, &call.column, call.count)
                        .await,
                ),
                Err(e) => Err(e),
            },
            wire::COORD_CATALOG => match parse::<CatalogPoll>(body) {
                Ok(poll) => {
                    let state = self.catalog.poll(poll.since).await;
                    reply(Ok(state.as_ref()))
                }
                Err(e) => Err(e),
            },
            wire::COORD_COMPACT => match parse(body) {
                Ok(task) => reply(c.compact(task).await),
                Err(e) => Err(e),
            },
            _ => {
                let result = self.catalog_change(kind, body).await;
                // Long polls learn of the change at once, not at the next scan.
                self.catalog.publish().await;
                result
            }
        }
    }

    /// Calls that change the catalog.
    async fn catalog_change(&self, kind: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
        let c = &self.coordinator;
        match kind {
            wire::COORD_CREATE_TABLE => {
                let call: wire::CreateTableCall = parse(body)?;
                reply(
                    c.create_table(&call.name, call.schema, call.if_not_exists)
                        .await,
                )
            }
            wire::COORD_DROP_TABLE => {
                let call: wire::DropCall = parse(body)?;
                reply(c.drop_table(&call.name, call.if_exists).await)
            }
            wire::COORD_SEGMENTS_SEALED => {
                let segments: Vec<SegmentMeta> = parse(body)?;
                reply(c.segments_sealed(segments).await)
            }
            wire::COORD_SEGMENTS_DROPPED => {
                let segments: Vec<SegmentMeta> = parse(body)?;
                reply(c.segments_dropped(segments).await)
            }
            wire::COORD_CREATE_INDEX => {
                let call: wire::CreateIndexCall = parse(body)?;
                reply(
                    c.create_index(&call.table, call.def, call.if_not_exists)
                        .await,
                )
            }
            wire::COORD_DROP_INDEX => {
                let call: wire::DropCall = parse(body)?;
                reply(c.drop_index(&call.name, call.if_exists).await)
            }
            wire::COORD_CREATE_ROLE => {
                let call: wire::CreateRoleCall = parse(body)?;
                reply(c.create_role(call.role, call.if_not_exists).await)
            }
            wire::COORD_ALTER_ROLE => reply(c.alter_role(parse(body)?).await),
            wire::COORD_DROP_ROLE => {
                let call: wire::DropCall = parse(body)?;
                reply(c.drop_role(&call.name, call.if_exists).await)
            }
            other => Err(unknown_action(other)),
        }
    }
}

/// A framed write's requests back as role requests.
pub fn decode_writes(body: &[u8]) -> ApiResult<Vec<WriteRequest>> {
    let (headers, batches): (Vec<WriteHeader>, Vec<Option<RecordBatch>>) = frame::decode(body)?;
    writes_of(headers, batches)
}

/// A framed prepare back as its call.
fn decode_prepare(body: &[u8]) -> ApiResult<(u64, Vec<u32>, PreparedChange)> {
    let (header, batches): (PrepareHeader, Vec<Option<RecordBatch>>) = frame::decode(body)?;
    let change = match header.truncate {
        Some(table) => PreparedChange::Truncate(table),
        None => PreparedChange::Writes(writes_of(header.writes, batches)?),
    };
    Ok((header.txn, header.shards, change))
}

/// Requests from their headers and their batches (keys to delete, rows to
/// insert, per request).
fn writes_of(
    headers: Vec<WriteHeader>,
    batches: Vec<Option<RecordBatch>>,
) -> ApiResult<Vec<WriteRequest>> {
    if batches.len() != headers.len() * 2 {
        return Err(ApiError::new(
            StatusCode::InvalidRequest,
            "malformed call body: batch count does not match the requests",
        ));
    }
    let mut batches = batches.into_iter();
    Ok(headers
        .into_iter()
        .map(|h| WriteRequest {
            table: h.table,
            delete_keys: batches.next().flatten(),
            insert: batches.next().flatten(),
            on_conflict: h.on_conflict,
        })
        .collect())
}

/// Serves the streaming role's control calls (snapshots are `DoGet`s).
pub async fn streaming_action(
    streaming: &Arc<dyn ShardOwnerApi>,
    kind: &str,
    body: &[u8],
) -> Result<Vec<u8>, Status> {
    match kind {
        wire::STREAM_WRITE => {
            let mut requests = decode_writes(body).map_err(to_status)?;
            let request = requests
                .pop()
                .filter(|_| requests.is_empty())
                .ok_or_else(|| bad_request("a write carries one request"))?;
            reply(streaming.write(request).await)
        }
        wire::STREAM_COMMIT => {
            let requests = decode_writes(body).map_err(to_status)?;
            reply(streaming.commit(requests).await)
        }
        wire::STREAM_EXISTING_KEYS => {
            let (table, batches): (TableInfo, Vec<Option<RecordBatch>>) =
                frame::decode(body).map_err(to_status)?;
            let keys = batches
                .into_iter()
                .next()
                .flatten()
                .ok_or_else(|| bad_request("existing_keys without keys"))?;
            reply(streaming.existing_keys(&table, keys).await)
        }
        wire::STREAM_TRUNCATE => {
            let table: TableInfo = parse(body)?;
            reply(streaming.truncate(&table).await)
        }
        wire::STREAM_WAIT_APPLIED => reply(streaming.wait_applied(parse(body)?).await),
        wire::STREAM_APPLIED_TS => reply(streaming.applied_ts().await),
        wire::STREAM_ACKNOWLEDGED_TS => reply(streaming.acknowledged_ts().await),
        wire::STREAM_FLUSH_ALL => reply(streaming.flush_all().await),
        wire::STREAM_COMPACT => {
            let table: Option<TableInfo> = parse(body)?;
            reply(streaming.compact(table.as_ref()).await)
        }
        wire::STREAM_OWNED_SHARDS => reply(streaming.owned_shards().await),
        wire::STREAM_APPLIED_REPORT => reply(streaming.applied_report(parse(body)?).await),
        wire::STREAM_PREPARE => {
            let (txn, shards, change) = decode_prepare(body).map_err(to_status)?;
            reply(streaming.prepare(txn, shards, change).await)
        }
        wire::STREAM_LOG_PREPARED => {
            let call: wire::LogPreparedCall = parse(body)?;
            reply(
                streaming
                    .log_prepared(call.txn, call.ts, call.participants)
                    .await,
            )
        }
        wire::STREAM_FINISH_PREPARED => {
            let call: wire::FinishPreparedCall = parse(body)?;
            reply(streaming.finish_prepared(call.txn, call.commit).await)
        }
        other => Err(unknown_action(other)),
    }
}

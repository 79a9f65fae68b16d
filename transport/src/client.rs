//! The calling side: role traits implemented by calls to a remote node.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, Ticket as FlightTicket};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use quiver_api::{
    ApiError, ApiResult, CompactionOutput, CompactionTask, DataApi, IndexBuildTask, QueryApi,
    SealedSegmentRef, SegmentSearchPlan, SegmentSearchResult, StatusCode, VectorSearchRequest,
};
use quiver_segment::{DeleteLogEntry, SegmentIndexMeta, SegmentMeta};
use quiver_types::{IndexId, SegmentId, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::AttachSecret;

use crate::status::from_status;
use crate::wire::{
    self, NodeStatus, ScanCall, SearchCall, SearchManyCall, SearchOutcome, Ticket,
    WireSearchRequest,
};
use crate::{MAX_MESSAGE_BYTES, TransportError};

/// A connection to one role process. Cheap to clone; connects lazily and
/// reconnects after failures by itself.
#[derive(Clone)]
pub struct NodeClient {
    endpoint: Arc<str>,
    channel: Channel,
    flight: FlightServiceClient<InterceptedService<Channel, AttachSecret>>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl NodeClient {
    /// `address` is `host:port` or an `http://` URL. Calls carry this
    /// process's cluster secret, if it has one.
    pub fn new(address: &str) -> Result<Self, TransportError> {
        Self::with_secret(address, crate::auth::cluster_secret().as_deref())
    }

    /// [`Self::new`] with an explicit cluster secret.
    pub fn with_secret(address: &str, secret: Option<&str>) -> Result<Self, TransportError> {
        let tls = crate::tls::cluster_tls();
        let bare = address.strip_prefix("http://").unwrap_or(address);
        let url = match tls {
            // With cluster TLS every role speaks only TLS, whatever the
            // address says.
            Some(_) => format!("https://{}", bare.strip_prefix("https://").unwrap_or(bare)),
            None if address.contains("://") => address.to_string(),
            None => format!("http://{address}"),
        };
        let invalid = |source| TransportError::InvalidEndpoint {
            address: address.to_string(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.clone()).map_err(invalid)?;
        if let Some(tls) = tls {
            let host = endpoint.uri().host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            endpoint = endpoint
                .tls_config(tls.client_config(&host))
                .map_err(invalid)?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        let flight =
            FlightServiceClient::with_interceptor(channel.clone(), AttachSecret::new(secret))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(NodeClient {
            endpoint: url.into(),
            channel,
            flight,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Who the node is, or an `Unavailable` error after `timeout`.
    pub async fn status(&self, timeout: Duration) -> ApiResult<NodeStatus> {
        match tokio::time::timeout(timeout, self.action(wire::NODE_STATUS, &())).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                StatusCode::Unavailable,
                format!(
                    "node {} did not answer within {} ms",
                    self.endpoint,
                    timeout.as_millis()
                ),
            )),
        }
    }

    pub(crate) async fn action<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        kind: &str,
        request: &Req,
    ) -> ApiResult<Resp> {
        let body = serde_json::to_vec(request).map_err(|e| internal(&e))?;
        self.action_body(kind, body).await
    }

    /// An action whose body is already encoded (framed batches).
    pub(crate) async fn action_body<Resp: DeserializeOwned>(
        &self,
        kind: &str,
        body: Vec<u8>,
    ) -> ApiResult<Resp> {
        let action = Action {
            r#type: kind.to_string(),
            body: Bytes::from(body),
        };
        let mut results = self
            .flight
            .clone()
            .do_action(action)
            .await
            .map_err(|s| from_status(&self.endpoint, s))?
            .into_inner();
        let result = results
            .message()
            .await
            .map_err(|s| from_status(&self.endpoint, s))?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::Unavailable,
                    format!("node {} sent no reply to {kind}", self.endpoint),
                )
            })?;
        serde_json::from_slice(&result.body).map_err(|e| internal(&e))
    }

    /// Runs a `DoGet`; returns the batches, the schema (when the stream had
    /// one: Flight sends no message for an empty batch) and the schema
    /// message's metadata.
    pub(crate) async fn get(
        &self,
        ticket: &Ticket,
    ) -> ApiResult<(Vec<RecordBatch>, Option<SchemaRef>, Bytes)> {
        let ticket = FlightTicket {
            ticket: Bytes::from(serde_json::to_vec(ticket).map_err(|e| internal(&e))?),
        };
        let stream = self
            .flight
            .clone()
            .do_get(ticket)
            .await
            .map_err(|s| from_status(&self.endpoint, s))?
            .into_inner()
            .map_err(FlightError::from);
        let mut decoder = FlightDataDecoder::new(stream);
        let mut batches = Vec::new();
        let mut meta = Bytes::new();
        let mut schema = None;
        while let Some(item) = decoder.next().await {
            let item = item.map_err(|e| match e {
                FlightError::Tonic(status) => from_status(&self.endpoint, *status),
                other => ApiError::new(
                    StatusCode::Unavailable,
                    format!("node {}: {other}", self.endpoint),
                ),
            })?;
            match item.payload {
                DecodedPayload::Schema(s) => {
                    schema = Some(s);
                    meta = item.inner.app_metadata;
                }
                DecodedPayload::RecordBatch(batch) => batches.push(batch),
                DecodedPayload::None => {}
            }
        }
        Ok((batches, schema, meta))
    }
}

pub(crate) fn internal(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::Internal, format!("transport encoding: {e}"))
}

/// How long a liveness probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A query node in another process.
#[derive(Debug, Clone)]
pub struct RemoteQueryNode {
    client: NodeClient,
}

impl RemoteQueryNode {
    pub fn new(client: NodeClient) -> Self {
        RemoteQueryNode { client }
    }

    /// The query node at `address`, as the role trait (connects lazily).
    pub fn connect(address: &str) -> Result<Arc<dyn QueryApi>, TransportError> {
        Ok(Arc::new(RemoteQueryNode::new(NodeClient::new(address)?)))
    }

    pub fn client(&self) -> &NodeClient {
        &self.client
    }
}

#[async_trait]
impl QueryApi for RemoteQueryNode {
    fn label(&self) -> String {
        let endpoint = self.client.endpoint();
        endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .unwrap_or(endpoint)
            .to_string()
    }

    async fn incarnation(&self) -> ApiResult<u64> {
        Ok(self.client.status(PROBE_TIMEOUT).await?.incarnation)
    }

    async fn load_segments(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        self.client
            .action(wire::QUERY_LOAD_SEGMENTS, &segments)
            .await
    }

    async fn release_segments(&self, segments: Vec<SegmentId>) -> ApiResult<()> {
        self.client
            .action(wire::QUERY_RELEASE_SEGMENTS, &segments)
            .await
    }

    async fn load_index(&self, index: SegmentIndexMeta) -> ApiResult<()> {
        self.client.action(wire::QUERY_LOAD_INDEX, &index).await
    }

    async fn release_index(&self, segment: SegmentId, index: IndexId) -> ApiResult<()> {
        self.client
            .action(
                wire::QUERY_RELEASE_INDEX,
                &wire::ReleaseIndexCall { segment, index },
            )
            .await
    }

    async fn search_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchResult> {
        let call = Ticket::Search(SearchCall {
            segment,
            ts,
            deletes: deletes.to_vec(),
            request: WireSearchRequest::encode(request)?,
        });
        let (batches, schema, meta) = self.client.get(&call).await?;
        let outcome: SearchOutcome = serde_json::from_slice(&meta).map_err(|e| internal(&e))?;
        let schema = schema.ok_or_else(|| {
            ApiError::new(
                StatusCode::Internal,
                format!(
                    "node {} sent a search result without a schema",
                    self.client.endpoint
                ),
            )
        })?;
        let rows = if batches.len() == 1 {
            batches
                .into_iter()
                .next()
                .unwrap_or_else(|| RecordBatch::new_empty(schema))
        } else {
            // None (no row matched) or several (split for size).
            arrow::compute::concat_batches(&schema, &batches).map_err(|e| internal(&e))?
        };
        Ok(SegmentSearchResult {
            rows,
            strategy: outcome.strategy,
            matching: outcome.matching,
        })
    }

    async fn search_segments(
        &self,
        segments: &[SealedSegmentRef],
        ts: Timestamp,
        request: &VectorSearchRequest,
    ) -> ApiResult<Vec<SegmentSearchResult>> {
        if segments.is_empty() {
            return Ok(Vec::new());
        }
        let call = Ticket::SearchMany(SearchManyCall {
            ts,
            segments: segments
                .iter()
                .map(|s| (s.segment, s.deletes.as_ref().clone()))
                .collect(),
            request: WireSearchRequest::encode(request)?,
        });
        let (batches, schema, meta) = self.client.get(&call).await?;
        let outcomes: Vec<SearchOutcome> =
            serde_json::from_slice(&meta).map_err(|e| internal(&e))?;
        let schema = schema.ok_or_else(|| {
            ApiError::new(
                StatusCode::Internal,
                format!(
                    "node {} sent search results without a schema",
                    self.client.endpoint
                ),
            )
        })?;
        let all = arrow::compute::concat_batches(&schema, &batches).map_err(|e| internal(&e))?;
        let total: usize = outcomes.iter().map(|o| o.rows).sum();
        if outcomes.len() != segments.len() || total != all.num_rows() {
            return Err(ApiError::new(
                StatusCode::Internal,
                format!(
                    "node {} answered {} of {} segments with {} of {total} rows",
                    self.client.endpoint,
                    outcomes.len(),
                    segments.len(),
                    all.num_rows()
                ),
            ));
        }
        let mut offset = 0;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                let rows = all.slice(offset, o.rows);
                offset += o.rows;
                SegmentSearchResult {
                    rows,
                    strategy: o.strategy,
                    matching: o.matching,
                }
            })
            .collect())
    }

    async fn explain_search(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        request: &VectorSearchRequest,
    ) -> ApiResult<SegmentSearchPlan> {
        let call = SearchCall {
            segment,
            ts,
            deletes: deletes.to_vec(),
            request: WireSearchRequest::encode(request)?,
        };
        self.client.action(wire::QUERY_EXPLAIN_SEARCH, &call).await
    }

    async fn scan_segment(
        &self,
        segment: SegmentId,
        ts: Timestamp,
        deletes: &[DeleteLogEntry],
        projection: Option<&[usize]>,
    ) -> ApiResult<Vec<RecordBatch>> {
        let call = Ticket::Scan(ScanCall {
            segment,
            ts,
            deletes: deletes.to_vec(),
            projection: projection.map(<[usize]>::to_vec),
        });
        Ok(self.client.get(&call).await?.0)
    }
}

/// A data node in another process.
#[derive(Debug, Clone)]
pub struct RemoteDataNode {
    client: NodeClient,
}

impl RemoteDataNode {
    pub fn new(client: NodeClient) -> Self {
        RemoteDataNode { client }
    }

    /// The data node at `address`, as the role trait (connects lazily).
    pub fn connect(address: &str) -> Result<Arc<dyn DataApi>, TransportError> {
        Ok(Arc::new(RemoteDataNode::new(NodeClient::new(address)?)))
    }
}

#[async_trait]
impl DataApi for RemoteDataNode {
    async fn build_index(&self, task: IndexBuildTask) -> ApiResult<SegmentIndexMeta> {
        self.client.action(wire::DATA_BUILD_INDEX, &task).await
    }

    async fn compact(&self, task: CompactionTask) -> ApiResult<CompactionOutput> {
        self.client.action(wire::DATA_COMPACT, &task).await
    }
}

/// Asks a node's standard gRPC health service (`grpc.health.v1`) whether it
/// serves; returns the reported status name (`SERVING` when healthy).
pub async fn check_health(address: &str, timeout: Duration) -> ApiResult<String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let client = NodeClient::new(address)?;
    let mut health = HealthClient::new(client.channel);
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(response)) => Ok(response.into_inner().status().as_str_name().to_string()),
        Ok(Err(status)) => Err(from_status(address, status)),
        Err(_) => Err(ApiError::new(
            StatusCode::Unavailable,
            format!(
                "node {address} did not answer within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

//! The serving side: one Flight service per process, dispatching to the
//! roles the process hosts.

use std::future::Future;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult,
};
use bytes::Bytes;
use datafusion::execution::TaskContext;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use quiver_api::{
    ApiError, ApiResult, CoordinatorApi, DataApi, QueryApi, SealedSegmentRef, ShardOwnerApi,
    StatusCode, VectorSearchRequest,
};
use quiver_segment::SegmentMeta;
use quiver_types::SegmentId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use crate::role_services::{CoordinatorService, streaming_action};
use crate::status::{bad_request, to_status};
use crate::wire::{self, NodeStatus, SearchCall, SearchOutcome, Ticket, WireSearchRequest};
use crate::{MAX_MESSAGE_BYTES, TransportError};

/// The roles one process serves over the network.
pub struct NodeService {
    query: Option<Arc<dyn QueryApi>>,
    data: Option<Arc<dyn DataApi>>,
    coordinator: Option<CoordinatorService>,
    streaming: Option<Arc<dyn ShardOwnerApi>>,
    /// Resolves functions named in search filters.
    functions: Arc<TaskContext>,
    incarnation: u64,
}

impl NodeService {
    /// `functions` must hold every function a proxy may put in a filter.
    pub fn new(functions: Arc<TaskContext>) -> Self {
        NodeService {
            query: None,
            data: None,
            coordinator: None,
            streaming: None,
            functions,
            incarnation: rand::random(),
        }
    }

    pub fn with_query(mut self, node: Arc<dyn QueryApi>) -> Self {
        self.query = Some(node);
        self
    }

    pub fn with_data(mut self, node: Arc<dyn DataApi>) -> Self {
        self.data = Some(node);
        self
    }

    /// Serves the coordinator and publishes its catalog, versioned by the
    /// leadership `term` (call inside the runtime: publishing runs as a
    /// task).
    pub fn with_coordinator(mut self, coordinator: Arc<dyn CoordinatorApi>, term: u64) -> Self {
        self.coordinator = Some(CoordinatorService::new(coordinator, term));
        self
    }

    pub fn with_streaming(mut self, streaming: Arc<dyn ShardOwnerApi>) -> Self {
        self.streaming = Some(streaming);
        self
    }

    fn query(&self) -> Result<&Arc<dyn QueryApi>, Status> {
        self.query.as_ref().ok_or_else(|| not_served("query"))
    }

    fn data(&self) -> Result<&Arc<dyn DataApi>, Status> {
        self.data.as_ref().ok_or_else(|| not_served("data"))
    }

    fn status(&self) -> NodeStatus {
        let mut roles = Vec::new();
        if self.query.is_some() {
            roles.push("query".to_string());
        }
        if self.data.is_some() {
            roles.push("data".to_string());
        }
        if self.coordinator.is_some() {
            roles.push("coordinator".to_string());
        }
        if self.streaming.is_some() {
            roles.push("streaming".to_string());
        }
        NodeStatus {
            incarnation: self.incarnation,
            roles,
        }
    }

    fn search_request(&self, wire: WireSearchRequest) -> ApiResult<VectorSearchRequest> {
        let filter = wire.filter.map(|f| f.decode(&self.functions)).transpose()?;
        Ok(VectorSearchRequest {
            column: wire.column,
            metric: wire.metric,
            query: Arc::new(wire.query),
            k: wire.k,
            search_list: wire.search_list,
            index: wire.index,
            filter,
            projection_with_distance: wire.projection_with_distance,
        })
    }

    async fn action(&self, kind: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
        match kind {
            wire::NODE_STATUS => reply(Ok(self.status())),
            wire::QUERY_LOAD_SEGMENTS => {
                let segments: Vec<SegmentMeta> = parse(body)?;
                reply(self.query()?.load_segments(segments).await)
            }
            wire::QUERY_RELEASE_SEGMENTS => {
                let segments: Vec<SegmentId> = parse(body)?;
                reply(self.query()?.release_segments(segments).await)
            }
            wire::QUERY_LOAD_INDEX => reply(self.query()?.load_index(parse(body)?).await),
            wire::QUERY_RELEASE_INDEX => {
                let call: wire::ReleaseIndexCall = parse(body)?;
                reply(self.query()?.release_index(call.segment, call.index).await)
            }
            wire::QUERY_EXPLAIN_SEARCH => {
                let call: wire::ExplainCall = parse(body)?;
                let request = self.search_request(call.request).map_err(to_status)?;
                reply(
                    self.query()?
                        .explain_search(call.segment, call.ts, &call.deletes, &request)
                        .await,
                )
            }
            wire::DATA_BUILD_INDEX => reply(self.data()?.build_index(parse(body)?).await),
            wire::DATA_COMPACT => reply(self.data()?.compact(parse(body)?).await),
            coordinator if coordinator.starts_with("coord.") => match &self.coordinator {
                Some(service) => service.action(kind, body).await,
                None => Err(not_served("coordinator")),
            },
            streaming if streaming.starts_with("streaming.") => match &self.streaming {
                Some(node) => streaming_action(node, kind, body).await,
                None => Err(not_served("streaming")),
            },
            other => Err(unknown_action(other)),
        }
    }

    /// Runs a batch-returning call; returns the batches, their schema and
    /// what goes into the schema message.
    async fn get(&self, ticket: Ticket) -> ApiResult<(Vec<RecordBatch>, Option<Bytes>)> {
        match ticket {
            Ticket::Snapshot(call) => self.snapshot(call).await,
            other => self.query_get(other).await,
        }
    }

    /// A shard's snapshot: growing rows as batches, sealed segments with
    /// their deletes in the schema message.
    async fn snapshot(
        &self,
        call: wire::SnapshotCall,
    ) -> ApiResult<(Vec<RecordBatch>, Option<Bytes>)> {
        let streaming = self.streaming.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::Unavailable,
                "this node serves no streaming role",
            )
        })?;
        let snapshot = streaming.snapshot(&call.table, call.shard, call.ts).await?;
        let sealed: Vec<(SegmentId, &[quiver_segment::DeleteLogEntry])> = snapshot
            .sealed
            .iter()
            .map(|s| (s.segment, s.deletes.as_slice()))
            .collect();
        let meta = serde_json::to_vec(&sealed)
            .map_err(|e| ApiError::new(StatusCode::Internal, e.to_string()))?;
        Ok((snapshot.growing, Some(Bytes::from(meta))))
    }

    async fn query_get(&self, ticket: Ticket) -> ApiResult<(Vec<RecordBatch>, Option<Bytes>)> {
        let query = self.query().map_err(|_| {
            ApiError::new(StatusCode::Unavailable, "this node serves no query role")
        })?;
        match ticket {
            Ticket::Search(SearchCall {
                segment,
                ts,
                deletes,
                request,
            }) => {
                let request = self.search_request(request)?;
                let result = query
                    .search_segment(segment, ts, &deletes, &request)
                    .await?;
                let outcome = SearchOutcome {
                    strategy: result.strategy,
                    matching: result.matching,
                    rows: result.rows.num_rows(),
                };
                let meta = serde_json::to_vec(&outcome)
                    .map_err(|e| ApiError::new(StatusCode::Internal, e.to_string()))?;
                Ok((vec![result.rows], Some(Bytes::from(meta))))
            }
            Ticket::SearchMany(call) => {
                let request = self.search_request(call.request)?;
                let segments: Vec<SealedSegmentRef> = call
                    .segments
                    .into_iter()
                    .map(|(segment, deletes)| SealedSegmentRef {
                        segment,
                        deletes: Arc::new(deletes),
                    })
                    .collect();
                let results = query.search_segments(&segments, call.ts, &request).await?;
                let outcomes: Vec<SearchOutcome> = results
                    .iter()
                    .map(|r| SearchOutcome {
                        strategy: r.strategy,
                        matching: r.matching,
                        rows: r.rows.num_rows(),
                    })
                    .collect();
                let meta = serde_json::to_vec(&outcomes)
                    .map_err(|e| ApiError::new(StatusCode::Internal, e.to_string()))?;
                let batches = match results.first() {
                    None => Vec::new(),
                    Some(first) => {
                        let schema = first.rows.schema();
                        let rows: Vec<&RecordBatch> = results.iter().map(|r| &r.rows).collect();
                        vec![
                            arrow::compute::concat_batches(&schema, rows)
                                .map_err(|e| ApiError::new(StatusCode::Internal, e.to_string()))?,
                        ]
                    }
                };
                Ok((batches, Some(Bytes::from(meta))))
            }
            Ticket::Snapshot(_) => Err(ApiError::new(
                StatusCode::Internal,
                "a snapshot is not a query-node call",
            )),
            Ticket::Scan(call) => {
                let batches = query
                    .scan_segment(
                        call.segment,
                        call.ts,
                        &call.deletes,
                        call.projection.as_deref(),
                    )
                    .await?;
                Ok((batches, None))
            }
        }
    }
}

fn not_served(role: &str) -> Status {
    to_status(ApiError::new(
        StatusCode::Unavailable,
        format!("this node serves no {role} role"),
    ))
}

pub(crate) fn unknown_action(kind: &str) -> Status {
    to_status(ApiError::new(
        StatusCode::Internal,
        format!("unknown action {kind} (are all processes the same version?)"),
    ))
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body).map_err(bad_request)
}

pub(crate) fn reply<T: Serialize>(result: ApiResult<T>) -> Result<Vec<u8>, Status> {
    let value = result.map_err(to_status)?;
    serde_json::to_vec(&value)
        .map_err(|e| to_status(ApiError::new(StatusCode::Internal, e.to_string())))
}

type Stream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for NodeService {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        tracing::debug!(action = %action.r#type, bytes = action.body.len(), "flight action");
        let body = self.action(&action.r#type, &action.body).await?;
        let result = arrow_flight::Result {
            body: Bytes::from(body),
        };
        Ok(Response::new(stream::iter([Ok(result)]).boxed()))
    }

    async fn do_get(
        &self,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket: Ticket = parse(&request.into_inner().ticket)?;
        tracing::debug!(call = ticket.name(), "flight get");
        let (batches, meta) = self.get(ticket).await.map_err(to_status)?;
        let mut encoder = FlightDataEncoderBuilder::new().with_max_flight_data_size(4 << 20);
        match batches.first() {
            Some(first) => encoder = encoder.with_schema(first.schema()),
            // The metadata rides on the schema message, which the encoder
            // only sends when it has a schema.
            None if meta.is_some() => {
                encoder = encoder.with_schema(Arc::new(arrow::datatypes::Schema::empty()))
            }
            None => {}
        }
        if let Some(meta) = meta {
            encoder = encoder.with_metadata(meta);
        }
        let stream = encoder
            .build(stream::iter(batches.into_iter().map(Ok)))
            .map_err(|e| to_status(ApiError::new(StatusCode::Internal, e.to_string())));
        Ok(Response::new(stream.boxed()))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let types = wire::ALL_ACTIONS.iter().map(|n| {
            Ok(ActionType {
                r#type: n.to_string(),
                description: String::new(),
            })
        });
        Ok(Response::new(
            stream::iter(types.collect::<Vec<_>>()).boxed(),
        ))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
}

/// Serves `service` and the gRPC health protocol on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: NodeService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError> {
    serve_with_secret(
        listener,
        service,
        crate::auth::cluster_secret().as_deref(),
        shutdown,
    )
    .await
}

/// [`serve`], refusing Flight calls that do not carry `secret` (when set).
pub async fn serve_with_secret(
    listener: TcpListener,
    service: NodeService,
    secret: Option<&str>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError> {
    let listen = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<FlightServiceServer<NodeService>>()
        .await;
    let flight = tonic::service::interceptor::InterceptedService::new(
        FlightServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        crate::auth::RequireSecret::new(secret),
    );
    server_builder(listen)?
        .add_service(health)
        .add_service(flight)
        .serve_with_incoming_shutdown(
            // The builder's tcp_nodelay does not reach a listener we pass
            // in; without it every small reply waits for a delayed ACK (~40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|source| TransportError::Serve { listen, source })
}

/// Serves only the gRPC health protocol, for a process whose clients speak
/// another protocol (the proxy speaks PostgreSQL): orchestrators probe every
/// Quiver process the same way.
pub async fn serve_health(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError> {
    let listen = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    // The overall status ("") starts as serving.
    let (_reporter, health) = tonic_health::server::health_reporter();
    server_builder(listen)?
        .add_service(health)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|source| TransportError::Serve { listen, source })
}

/// A gRPC server, on TLS when the cluster has it (`[cluster.tls]`).
fn server_builder(
    listen: std::net::SocketAddr,
) -> Result<tonic::transport::Server, TransportError> {
    let builder = tonic::transport::Server::builder();
    match crate::tls::cluster_tls() {
        Some(tls) => builder
            .tls_config(tls.server_config())
            .map_err(|source| TransportError::Serve { listen, source }),
        None => Ok(builder),
    }
}

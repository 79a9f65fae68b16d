//! The network transport of the role interfaces.
//!
//! Standalone mode calls the role traits of [`quiver_api`] (coordinator,
//! streaming, query and data nodes) in-process; a cluster puts this crate
//! between the caller and the role, so no role logic exists twice. Every role process serves one Arrow Flight
//! service (gRPC over tonic): control calls are Flight actions whose bodies
//! are JSON, record batches travel as Arrow IPC in `DoGet` streams, and
//! failures carry their [`quiver_api::StatusCode`] in a trailer so the
//! caller sees the same error the role raised. The same server answers the
//! standard gRPC health protocol (`grpc.health.v1`), which orchestrators'
//! probes and the coordinator's liveness checks use.
//!
//! Flight rather than a bespoke protobuf service: its batch encoding
//! (splitting, dictionaries, schema messages) is exactly what scans and
//! search results need, and the generated code ships with `arrow-flight`.

mod auth;
mod catalog;
mod client;
mod failover;
mod filter;
mod frame;
mod remote_coordinator;
mod remote_streaming;
mod role_services;
mod server;
mod status;
mod tls;
mod wire;

use std::net::SocketAddr;

pub use auth::install_cluster_secret;
pub use catalog::{CatalogState, CatalogVersion};
pub use client::{NodeClient, RemoteDataNode, RemoteQueryNode, check_health};
pub use failover::{FailoverClient, Retry};
pub use remote_coordinator::RemoteCoordinator;
pub use remote_streaming::RemoteStreamingNode;
pub use server::{NodeService, serve, serve_health, serve_with_secret};
pub use tls::{ClusterTls, install_cluster_tls};
pub use wire::NodeStatus;

/// Failures of the transport itself (role failures are `ApiError`s).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid node address \"{address}\"")]
    InvalidEndpoint {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read the cluster TLS {what} {path}")]
    TlsFile {
        what: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server on {listen} failed")]
    Serve {
        listen: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

impl From<TransportError> for quiver_api::ApiError {
    fn from(e: TransportError) -> Self {
        quiver_api::ApiError::from_error(quiver_api::StatusCode::InvalidRequest, &e)
    }
}

/// Largest message either side accepts: a scan of a whole segment or a
/// search carrying a long delete list must fit.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

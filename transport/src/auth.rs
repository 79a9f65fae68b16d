//! The cluster secret: every call between role processes carries it as a
//! bearer token, and every role's Flight service refuses calls without it
//! (`Unauthenticated`), so a host that can reach a coordinator's port cannot
//! drop tables or read segments unless it holds the secret. The gRPC health
//! service stays open: probes carry no credentials.
//!
//! The secret is process-wide (one process belongs to one cluster), set once
//! at start-up from `[cluster] secret`; clients and servers built before
//! that, or in a process without a secret, use none.

use std::sync::OnceLock;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

static SECRET: OnceLock<Option<String>> = OnceLock::new();

const HEADER: &str = "authorization";

/// Sets this process's cluster secret; only the first call counts.
pub fn install_cluster_secret(secret: Option<String>) {
    let _ = SECRET.set(secret.filter(|s| !s.is_empty()));
}

pub(crate) fn cluster_secret() -> Option<String> {
    SECRET.get().cloned().flatten()
}

/// Adds the bearer token to outgoing calls.
#[derive(Clone)]
pub struct AttachSecret {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachSecret {
    pub fn new(secret: Option<&str>) -> Self {
        AttachSecret {
            header: secret.and_then(|s| format!("Bearer {s}").parse().ok()),
        }
    }
}

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert(HEADER, h.clone());
        }
        Ok(request)
    }
}

/// Refuses incoming calls without the expected bearer token.
#[derive(Clone)]
pub struct RequireSecret {
    expected: Option<Vec<u8>>,
}

impl RequireSecret {
    pub fn new(secret: Option<&str>) -> Self {
        RequireSecret {
            expected: secret.map(|s| format!("Bearer {s}").into_bytes()),
        }
    }
}

impl Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Constant time: a mismatch must not tell how much of it was right.
        if bool::from(presented.ct_eq(expected.as_slice())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong cluster secret (set the same [cluster] secret in every process's configuration)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::execution::TaskContext;
    use quiver_api::StatusCode;

    use crate::{NodeClient, NodeService, check_health, serve_with_secret};

    #[tokio::test]
    async fn calls_without_the_cluster_secret_are_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_secret(
            listener,
            NodeService::new(Arc::new(TaskContext::default())),
            Some("s3cret"),
            async {
                let _ = stopped.await;
            },
        ));
        let wait = Duration::from_secs(5);
        let right = NodeClient::with_secret(&address, Some("s3cret")).unwrap();
        right
            .status(wait)
            .await
            .expect("the right secret is let in");
        for wrong in [None, Some("s3cre"), Some("s3cret2")] {
            let client = NodeClient::with_secret(&address, wrong).unwrap();
            let err = client.status(wait).await.expect_err("refused");
            assert_eq!(err.code, StatusCode::Internal, "{}", err.message);
            assert!(
                err.message.contains("Unauthenticated") && err.message.contains("cluster secret"),
                "{}",
                err.message
            );
        }
        // Health probes carry no credentials and still get an answer.
        assert_eq!(check_health(&address, wait).await.unwrap(), "SERVING");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}

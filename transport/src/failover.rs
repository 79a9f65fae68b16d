//! Calls to a role served by one active process among standbys (the
//! coordinator, the streaming node): a standby does not listen, so a call
//! refused as `Unavailable` moves on to the next process, and the one that
//! answered is tried first next time.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use quiver_api::{ApiError, ApiResult, StatusCode};

use crate::TransportError;
use crate::client::NodeClient;

/// Whether a call may run twice. A call that failed as `Unavailable` may
/// still have run (the connection broke after the request went out), so
/// only calls that do no harm twice move on to the next process at once;
/// the others fail, and the next call starts at the next process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Idempotent,
    Once,
}

#[derive(Debug)]
pub struct FailoverClient {
    nodes: Vec<NodeClient>,
    preferred: AtomicUsize,
}

impl FailoverClient {
    /// `what` names the configuration key listing the addresses.
    pub fn new(addresses: &[String], what: &str) -> ApiResult<Self> {
        if addresses.is_empty() {
            return Err(ApiError::new(
                StatusCode::InvalidRequest,
                format!("no address configured in {what}"),
            ));
        }
        let nodes = addresses
            .iter()
            .map(|a| NodeClient::new(a))
            .collect::<Result<Vec<_>, TransportError>>()?;
        Ok(FailoverClient {
            nodes,
            preferred: AtomicUsize::new(0),
        })
    }

    pub async fn call<T, F, Fut>(&self, retry: Retry, call: F) -> ApiResult<T>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let n = self.nodes.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let attempts = if retry == Retry::Idempotent { n } else { 1 };
        let mut last_error = None;
        for i in 0..attempts {
            let at = (first + i) % n;
            match call(self.nodes[at].clone()).await {
                Ok(reply) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) if e.code == StatusCode::Unavailable => {
                    self.preferred.store((at + 1) % n, Ordering::Relaxed);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::new(StatusCode::Unavailable, "no process")))
    }
}

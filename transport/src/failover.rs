//! Calls to a role served by one active process among standbys (the
//! coordinator, the streaming node): a standby does not listen, so a call
//! refused as `Unavailable` moves on to the next process, and the one that
//! answered is tried first next time.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use quiver_api::{ApiError, ApiResult, StatusCode};

use crate::TransportError;
use crate::client::NodeClient;

/// Whether a call may run twice. A call that never reached a process
/// (`Unreachable`: nothing listens) moves on to the next one in any case.
/// A call that failed as `Unavailable` may still have run (the connection
/// broke after the request went out), so only calls that do no harm twice
/// move on at once; the others fail, and the next call starts at the next
/// process.
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

    /// A control call (JSON body) on the active process.
    pub async fn action<Req, Resp>(
        &self,
        kind: &str,
        request: &Req,
        retry: Retry,
    ) -> ApiResult<Resp>
    where
        Req: serde::Serialize + Sync + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        self.call(
            retry,
            |node| async move { node.action(kind, request).await },
        )
        .await
    }

    /// A control call whose body is already encoded (framed batches).
    pub async fn action_body<Resp: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        body: Vec<u8>,
        retry: Retry,
    ) -> ApiResult<Resp> {
        let body = &body;
        self.call(retry, |node| async move {
            node.action_body(kind, body.clone()).await
        })
        .await
    }

    pub async fn call<T, F, Fut>(&self, retry: Retry, call: F) -> ApiResult<T>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let n = self.nodes.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_error = None;
        for i in 0..n {
            let at = (first + i) % n;
            match call(self.nodes[at].clone()).await {
                Ok(reply) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(reply);
                }
                // Never delivered (a standby does not listen): the next
                // process may take any call.
                Err(e) if e.code == StatusCode::Unreachable => {
                    self.preferred.store((at + 1) % n, Ordering::Relaxed);
                    last_error = Some(e);
                }
                Err(e) if e.code == StatusCode::Unavailable => {
                    self.preferred.store((at + 1) % n, Ordering::Relaxed);
                    if retry == Retry::Once {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::new(StatusCode::Unavailable, "no process")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use super::*;

    fn dead_address() -> String {
        // Bound and dropped: nothing listens there afterwards.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn refused_connections_are_unreachable_and_move_on() {
        let client = FailoverClient::new(&[dead_address(), dead_address()], "test").unwrap();
        let tried = AtomicU32::new(0);
        let result: ApiResult<crate::NodeStatus> = client
            .call(Retry::Once, |node| {
                tried.fetch_add(1, Ordering::Relaxed);
                async move { node.status(Duration::from_secs(2)).await }
            })
            .await;
        let err = result.expect_err("nothing listens");
        assert_eq!(err.code, StatusCode::Unreachable, "{}", err.message);
        // Even a call that must not run twice tries every process when
        // none received it.
        assert_eq!(tried.load(Ordering::Relaxed), 2);
    }
}

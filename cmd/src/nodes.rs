//! The role processes that serve one role over gRPC/Flight: `quiver
//! query-node` and `quiver data-node`. They are the very role
//! implementations standalone calls in-process, behind the transport.

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::TaskContext;
use datafusion::prelude::SessionContext;
use quiver_frontend::config::{Config, MetaConfig};
use quiver_meta::{Registration, keys};
use quiver_segment::open_object_store;
use quiver_transport::NodeService;
use tokio::net::TcpListener;

/// Functions a search filter may name: DataFusion's built-ins and pgvector's
/// vector functions, as the proxy plans them.
pub(crate) fn filter_functions() -> Arc<TaskContext> {
    let ctx = SessionContext::new();
    for udf in quiver_planner::vector::udfs() {
        ctx.register_udf(udf);
    }
    ctx.task_ctx()
}

pub async fn run_query_node(config: &Config) -> anyhow::Result<()> {
    let node = crate::standalone::query_node(config, open_store(config)?)?;
    let service = NodeService::new(filter_functions()).with_query(node);
    let (listen, advertise) = (&config.query.listen, &config.query.advertise);
    serve_registered(
        config,
        "query node",
        listen,
        advertise,
        keys::query_node,
        service,
    )
    .await
}

pub async fn run_data_node(config: &Config) -> anyhow::Result<()> {
    let node = crate::standalone::data_node(config, open_store(config)?)?;
    let service = NodeService::new(filter_functions()).with_data(node);
    let (listen, advertise) = (&config.data.listen, &config.data.advertise);
    serve_registered(
        config,
        "data node",
        listen,
        advertise,
        keys::data_node,
        service,
    )
    .await
}

pub(crate) fn open_store(config: &Config) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    std::fs::create_dir_all(&config.data_dir)?;
    Ok(open_object_store(&config.object_store())?)
}

/// Listens, registers the node under `key(address)` when the meta store is
/// shared, and serves until a shutdown signal (deregistering first).
async fn serve_registered(
    config: &Config,
    role: &str,
    listen: &str,
    advertise: &Option<String>,
    key: fn(&str) -> String,
    service: NodeService,
) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    let address = advertised(&listener, advertise)?;
    let registration = register(config, key(&address), &address).await?;
    serve(
        role,
        listener,
        service,
        deregister_on_shutdown(registration),
    )
    .await
}

fn advertised(listener: &TcpListener, advertise: &Option<String>) -> anyhow::Result<String> {
    Ok(match advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    })
}

/// On a shared meta store a node registers itself, leased: coordinators
/// that discover nodes find it, and lose it when it dies.
async fn register(
    config: &Config,
    key: String,
    address: &str,
) -> anyhow::Result<Option<Registration>> {
    let MetaConfig::Etcd(_) = &config.storage.meta else {
        return Ok(None);
    };
    let ttl = lease_ttl(config);
    let registration = retry_storage("registration", || async {
        let meta = config.open_meta_store().await?;
        Ok(meta
            .register(&key, serde_json::to_vec(address)?, ttl)
            .await?)
    })
    .await?;
    tracing::info!(%key, ttl_ms = ttl.as_millis() as u64, "node registered");
    Ok(Some(registration))
}

/// The time to live of every lease a process holds on etcd (node
/// registrations, coordinator and streaming-node leadership): a process
/// that stops renewing is gone this long after, as the coordinator's
/// failure timeout for nodes says.
pub(crate) fn lease_ttl(config: &Config) -> Duration {
    Duration::from_millis(config.coordinator.node_failure_timeout_ms.max(1_000))
}

/// How long start-up retries while the meta store is not ready.
const STORAGE_WAIT: Duration = Duration::from_secs(30);

/// Retries `attempt` for [`STORAGE_WAIT`]: etcd may still be electing its
/// own leader when the cluster starts up.
pub(crate) async fn retry_storage<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + STORAGE_WAIT;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = format!("{e:#}"), "{what} failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Completes on SIGINT/SIGTERM after removing the registration, so
/// coordinators stop using the node at once instead of at the lease's
/// expiry; the server stops after that.
async fn deregister_on_shutdown(registration: Option<Registration>) {
    shutdown_signal().await;
    if let Some(registration) = registration {
        registration.release().await;
        tracing::info!("node deregistered");
    }
}

pub(crate) async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))
}

pub(crate) async fn serve(
    role: &str,
    listener: TcpListener,
    service: NodeService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tracing::info!(listen = %listener.local_addr()?, "quiver {role} ready");
    quiver_transport::serve(listener, service, shutdown).await?;
    tracing::info!("quiver {role} stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

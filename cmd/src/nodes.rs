//! The role processes that serve one role over gRPC/Flight: `quiver
//! query-node` and `quiver data-node`. They are the very role
//! implementations standalone calls in-process, behind the transport.

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::TaskContext;
use datafusion::prelude::SessionContext;
use quiver_frontend::config::{Config, MetaConfig};
use quiver_meta::keys;
use quiver_segment::open_object_store;
use quiver_transport::NodeService;
use tokio::net::TcpListener;

/// Functions a search filter may name: DataFusion's built-ins and pgvector's
/// vector functions, as the proxy plans them.
fn filter_functions() -> Arc<TaskContext> {
    let ctx = SessionContext::new();
    for udf in quiver_planner::vector::udfs() {
        ctx.register_udf(udf);
    }
    ctx.task_ctx()
}

pub async fn run_query_node(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = open_object_store(&config.object_store())?;
    let node = crate::standalone::query_node(config, store)?;
    let service = NodeService::new(filter_functions()).with_query(node);
    let listener = bind(&config.query.listen).await?;
    // On a shared meta store the node registers itself, leased: coordinators
    // that discover query nodes find it, and lose it when it dies.
    let registration = match &config.storage.meta {
        MetaConfig::Etcd(_) => {
            let meta = config.open_meta_store().await?;
            let address = match &config.query.advertise {
                Some(a) => a.clone(),
                None => listener.local_addr()?.to_string(),
            };
            let ttl = Duration::from_millis(config.coordinator.node_failure_timeout_ms.max(1_000));
            let value = serde_json::to_vec(&address)?;
            let registration = meta
                .register(&keys::query_node(&address), value, ttl)
                .await?;
            tracing::info!(%address, ttl_ms = ttl.as_millis() as u64, "query node registered");
            Some(registration)
        }
        _ => None,
    };
    // Deregister before the server stops, so coordinators move the
    // segments away at once instead of at the lease's expiry.
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(registration) = registration {
            registration.release().await;
            tracing::info!("query node deregistered");
        }
    };
    serve("query node", listener, service, shutdown).await
}

pub async fn run_data_node(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = open_object_store(&config.object_store())?;
    let node = crate::standalone::data_node(config, store)?;
    let service = NodeService::new(filter_functions()).with_data(node);
    serve(
        "data node",
        bind(&config.data.listen).await?,
        service,
        shutdown_signal(),
    )
    .await
}

async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))
}

async fn serve(
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
async fn shutdown_signal() {
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

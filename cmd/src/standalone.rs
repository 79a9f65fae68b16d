//! Standalone mode: the proxy, coordinator and streaming node in one
//! process, wired with in-process calls; query and data nodes in the same
//! process too unless `[coordinator] query_nodes` / `data_nodes` name
//! processes of their own (reached over gRPC/Flight). On the embedded
//! storage backends everything lives under one data directory.

use std::sync::Arc;
use std::time::Duration;

use quiver_api::{CoordinatorApi, DataApi, QueryApi, StreamingApi};
use quiver_coordinator::{Coordinator, CoordinatorOptions, NodeMonitorOptions};
use quiver_data::{DataNode, DataNodeOptions};
use quiver_meta::MetaStore;
use quiver_query::{IndexCacheOptions, QueryNode};
use quiver_segment::open_object_store;
use quiver_streaming::{StreamingNode, StreamingOptions};
use quiver_transport::{RemoteDataNode, RemoteQueryNode};

use quiver_frontend::config::Config;
use quiver_frontend::engine::{Backends, Engine};

/// Starts the roles in dependency order and returns the frontend engine.
pub async fn start(config: &Config) -> anyhow::Result<Arc<Engine>> {
    std::fs::create_dir_all(&config.data_dir)?;
    let meta = config.open_meta_store().await?;
    let store = open_object_store(&config.object_store())?;
    let coordinator: Arc<dyn CoordinatorApi> =
        start_coordinator(config, meta.clone(), store.clone(), true).await?;
    // One meta store for both roles: the embedded store must be opened
    // once per process.
    let streaming = start_streaming(config, meta, store, coordinator.clone()).await?;
    engine(
        config,
        Backends {
            coordinator,
            streaming,
        },
    )
}

/// The coordinator with its query and data nodes: those of the
/// configuration when it names any (processes of their own), else, when
/// `in_process_nodes`, one of each inside this process.
pub async fn start_coordinator(
    config: &Config,
    meta: Arc<dyn MetaStore>,
    store: Arc<dyn object_store::ObjectStore>,
    in_process_nodes: bool,
) -> anyhow::Result<Arc<Coordinator>> {
    let cc = &config.coordinator;
    let remote_query = !cc.query_nodes.is_empty() || cc.discover_query_nodes;
    let remote_data = !cc.data_nodes.is_empty() || cc.discover_data_nodes;
    let all_remote = remote_query && remote_data;
    if !in_process_nodes && !all_remote {
        anyhow::bail!(
            "a coordinator process needs query and data nodes of their own: set \
             [coordinator] query_nodes / discover_query_nodes and data_nodes / discover_data_nodes"
        );
    }
    let query_nodes: Vec<Arc<dyn QueryApi>> = if remote_query {
        cc.query_nodes
            .iter()
            .map(|a| RemoteQueryNode::connect(a))
            .collect::<Result<_, _>>()?
    } else {
        vec![query_node(config, store.clone())?]
    };
    let data_nodes: Vec<Arc<dyn DataApi>> = if remote_data {
        cc.data_nodes
            .iter()
            .map(|a| RemoteDataNode::connect(a))
            .collect::<Result<_, _>>()?
    } else {
        vec![data_node(config, store.clone())?]
    };
    let coordinator = Arc::new(
        Coordinator::open(
            meta,
            store,
            CoordinatorOptions {
                shards: cc.shards,
                min_index_rows: cc.min_index_rows,
            },
            query_nodes,
        )
        .await?,
    );
    for node in data_nodes {
        coordinator.attach_data_node(node);
    }
    coordinator.start_index_builds();
    if cc.discover_query_nodes {
        coordinator.discover_query_nodes(Arc::new(|a: &str| Ok(RemoteQueryNode::connect(a)?)));
    }
    if cc.discover_data_nodes {
        coordinator.discover_data_nodes(Arc::new(|a: &str| Ok(RemoteDataNode::connect(a)?)));
    }
    if remote_query || cc.discover_data_nodes {
        coordinator.start_node_monitor(NodeMonitorOptions {
            probe_interval: Duration::from_millis(cc.node_probe_interval_ms.max(10)),
            failure_timeout: Duration::from_millis(cc.node_failure_timeout_ms),
        });
    }
    Ok(coordinator)
}

/// The streaming node owning every shard, on the configured WAL.
pub async fn start_streaming(
    config: &Config,
    meta: Arc<dyn MetaStore>,
    store: Arc<dyn object_store::ObjectStore>,
    coordinator: Arc<dyn CoordinatorApi>,
) -> anyhow::Result<Arc<dyn StreamingApi>> {
    let wal = config.open_wal().await?;
    let node: Arc<dyn StreamingApi> =
        StreamingNode::open(wal, meta, store, coordinator, streaming_options(config)).await?;
    Ok(node)
}

pub(crate) fn streaming_options(config: &Config) -> StreamingOptions {
    let sc = &config.streaming;
    StreamingOptions {
        seal_rows: sc.seal_rows.max(1),
        tick_interval: Duration::from_millis(sc.tick_interval_ms.max(1)),
        compaction_interval: Duration::from_millis(sc.compaction_interval_ms),
        compaction_deleted_ratio: sc.compaction_deleted_ratio,
        direct_seal_rows: sc.direct_seal_rows,
    }
}

/// The frontend over its backends.
pub fn engine(config: &Config, backends: Backends) -> anyhow::Result<Arc<Engine>> {
    let engine = Engine::new(
        Arc::new(backends),
        Duration::from_millis(config.frontend.bounded_staleness_ms),
        config
            .frontend
            .transaction_buffer_mb
            .saturating_mul(1 << 20) as usize,
    )
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(Arc::new(engine))
}

/// Serves PostgreSQL (and gRPC health when configured) until the process
/// ends.
pub async fn serve_frontend(
    config: &Config,
    engine: Arc<Engine>,
    role: &str,
) -> anyhow::Result<()> {
    let listen = &config.frontend.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    if let Some(health) = &config.frontend.health_listen {
        let health = tokio::net::TcpListener::bind(health)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {health}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = quiver_transport::serve_health(health, std::future::pending()).await {
                tracing::error!(error = %e, "health service failed");
            }
        });
    }
    tracing::info!(
        listen = %listen,
        data_dir = %config.data_dir.display(),
        "quiver {role} ready"
    );
    quiver_frontend::server::serve(engine, listener, &config.frontend).await?;
    Ok(())
}

/// A query node on this process's configuration.
pub fn query_node(
    config: &Config,
    store: Arc<dyn object_store::ObjectStore>,
) -> anyhow::Result<Arc<QueryNode>> {
    Ok(QueryNode::new(
        store,
        IndexCacheOptions {
            dir: config.index_cache_dir(),
            capacity_bytes: config.query.index_cache_mb.saturating_mul(1 << 20),
            search_threads: config.query.search_threads.max(1),
            vector_dir: config.vector_cache_dir(),
        },
    )?)
}

/// A data node on this process's configuration.
pub fn data_node(
    config: &Config,
    store: Arc<dyn object_store::ObjectStore>,
) -> anyhow::Result<Arc<DataNode>> {
    Ok(Arc::new(DataNode::new(
        store,
        DataNodeOptions {
            scratch_dir: config.data_dir.join("data-node"),
            build_threads: config.data.build_threads.max(1),
        },
    )?))
}

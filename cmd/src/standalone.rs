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
    let wal = config.open_wal().await?;
    let remote_query =
        !config.coordinator.query_nodes.is_empty() || config.coordinator.discover_query_nodes;
    let query_nodes: Vec<Arc<dyn QueryApi>> = if remote_query {
        config
            .coordinator
            .query_nodes
            .iter()
            .map(|a| RemoteQueryNode::connect(a))
            .collect::<Result<_, _>>()?
    } else {
        vec![query_node(config, store.clone())?]
    };
    let remote_data =
        !config.coordinator.data_nodes.is_empty() || config.coordinator.discover_data_nodes;
    let data_nodes: Vec<Arc<dyn DataApi>> = if !remote_data {
        vec![data_node(config, store.clone())?]
    } else {
        config
            .coordinator
            .data_nodes
            .iter()
            .map(|a| RemoteDataNode::connect(a))
            .collect::<Result<_, _>>()?
    };
    let coordinator = Arc::new(
        Coordinator::open(
            meta.clone(),
            store.clone(),
            CoordinatorOptions {
                shards: config.coordinator.shards,
                min_index_rows: config.coordinator.min_index_rows,
            },
            query_nodes.clone(),
        )
        .await?,
    );
    for node in data_nodes {
        coordinator.attach_data_node(node);
    }
    coordinator.start_index_builds();
    if config.coordinator.discover_query_nodes {
        coordinator.discover_query_nodes(Arc::new(|a: &str| Ok(RemoteQueryNode::connect(a)?)));
    }
    if config.coordinator.discover_data_nodes {
        coordinator.discover_data_nodes(Arc::new(|a: &str| Ok(RemoteDataNode::connect(a)?)));
    }
    if remote_query || config.coordinator.discover_data_nodes {
        coordinator.start_node_monitor(NodeMonitorOptions {
            probe_interval: Duration::from_millis(
                config.coordinator.node_probe_interval_ms.max(10),
            ),
            failure_timeout: Duration::from_millis(config.coordinator.node_failure_timeout_ms),
        });
    }
    let coordinator: Arc<dyn CoordinatorApi> = coordinator;
    let streaming: Arc<dyn StreamingApi> = StreamingNode::open(
        wal,
        meta,
        store,
        coordinator.clone(),
        StreamingOptions {
            seal_rows: config.streaming.seal_rows.max(1),
            tick_interval: Duration::from_millis(config.streaming.tick_interval_ms.max(1)),
            compaction_interval: Duration::from_millis(config.streaming.compaction_interval_ms),
            compaction_deleted_ratio: config.streaming.compaction_deleted_ratio,
        },
    )
    .await?;
    let backends = Arc::new(Backends {
        coordinator,
        streaming,
    });
    let engine = Engine::new(
        backends,
        Duration::from_millis(config.frontend.bounded_staleness_ms),
        config
            .frontend
            .transaction_buffer_mb
            .saturating_mul(1 << 20) as usize,
    )
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(Arc::new(engine))
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

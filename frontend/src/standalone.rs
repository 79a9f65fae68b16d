//! Standalone mode: every role in one process, wired with in-process calls,
//! on the embedded storage backends under one data directory.

use std::sync::Arc;
use std::time::Duration;

use quiver_api::{CoordinatorApi, QueryApi, StreamingApi};
use quiver_coordinator::{Coordinator, CoordinatorOptions};
use quiver_data::{DataNode, DataNodeOptions};
use quiver_query::{IndexCacheOptions, QueryNode};
use quiver_segment::open_object_store;
use quiver_streaming::{StreamingNode, StreamingOptions};

use crate::config::Config;
use crate::engine::{Backends, Engine};

/// Starts the roles in dependency order and returns the frontend engine.
pub async fn start(config: &Config) -> anyhow::Result<Arc<Engine>> {
    std::fs::create_dir_all(&config.data_dir)?;
    let meta = config.open_meta_store().await?;
    let store = open_object_store(&config.object_store())?;
    let wal = config.open_wal().await?;
    let query_node = QueryNode::new(
        store.clone(),
        IndexCacheOptions {
            dir: config.index_cache_dir(),
            capacity_bytes: config.query.index_cache_mb.saturating_mul(1 << 20),
            search_threads: config.query.search_threads.max(1),
            vector_dir: config.vector_cache_dir(),
        },
    )?;
    let query_nodes: Vec<Arc<dyn QueryApi>> = vec![query_node];
    let data_node = DataNode::new(
        store.clone(),
        DataNodeOptions {
            scratch_dir: config.data_dir.join("data-node"),
            build_threads: config.data.build_threads.max(1),
        },
    )?;
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
    coordinator.attach_data_node(Arc::new(data_node));
    coordinator.start_index_builds();
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
        query_nodes,
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

//! The processes of a cluster whose every role runs on its own: `quiver
//! coordinator`, `quiver streaming-node` and `quiver proxy`. Each wires the
//! same role implementations standalone uses, reaching the others through
//! `quiver-transport` at the addresses of `[cluster]`.

use std::sync::Arc;
use std::time::Duration;

use quiver_frontend::config::{Config, MetaConfig};
use quiver_frontend::engine::Backends;
use quiver_meta::{Leadership, MetaStore, keys};
use quiver_transport::{NodeService, RemoteCoordinator, RemoteStreamingNode};

use quiver_streaming::StreamingNode;
use quiver_streaming::ownership::share_shards;
use quiver_streaming::router::ShardRouter;

use crate::nodes::{
    bind, filter_functions, lease_ttl, open_store, retry_storage, serve, shutdown_signal,
};
use crate::standalone;

/// How long a process waits at start-up for the coordinator to answer.
const COORDINATOR_WAIT: Duration = Duration::from_secs(60);

/// Roles in different processes share the meta store: only etcd can be
/// shared.
fn require_shared_meta(config: &Config, role: &str) -> anyhow::Result<()> {
    match &config.storage.meta {
        MetaConfig::Etcd(_) => Ok(()),
        MetaConfig::Embedded { .. } => anyhow::bail!(
            "quiver {role} shares the meta store with the other roles: \
             set [storage.meta] kind = \"etcd\""
        ),
    }
}

/// A coordinator process: a standby until it wins the election on etcd,
/// then the leader until it stops or loses its lease. A standby does not
/// listen, so callers that list every coordinator move on to the leader;
/// the timestamp oracle continues above every window the previous leader
/// reserved in etcd, so timestamps never go backwards.
pub async fn run_coordinator(config: &Config) -> anyhow::Result<()> {
    require_shared_meta(config, "coordinator")?;
    let store = open_store(config)?;
    let cc = &config.coordinator;
    let address = cc.advertise.clone().unwrap_or_else(|| cc.listen.clone());
    let (meta, leadership) =
        lead(config, "coordinator", keys::COORDINATOR_LEADER, &address).await?;
    let coordinator = retry_storage("coordinator start-up", || {
        standalone::start_coordinator(config, meta.clone(), store.clone(), false)
    })
    .await?;
    let service =
        NodeService::new(filter_functions()).with_coordinator(coordinator, leadership.term());
    serve_while_leading("coordinator", &cc.listen, service, leadership).await
}

/// A streaming-node process: it registers on etcd and serves its share of
/// the shards (`quiver_streaming::ownership`): shard `s` goes to the
/// `s mod n`-th of the `n` live streaming nodes. When a node dies its
/// shards move to the others, which replay each shard's WAL from its
/// checkpoint in etcd; that needs a WAL every process reaches
/// (`[storage.wal] kind = "kafka"`). A node that cannot renew a shard's
/// owner key exits at once (another node may own the shard by then).
pub async fn run_streaming_node(config: &Config) -> anyhow::Result<()> {
    require_shared_meta(config, "streaming-node")?;
    std::fs::create_dir_all(&config.data_dir)?;
    let sc = &config.streaming;
    let meta = retry_storage("opening the meta store", || async {
        Ok(config.open_meta_store().await?)
    })
    .await?;
    let wal = open_shared_wal(config).await?;
    // Listening only once the WAL is open: a node standing by for a local
    // WAL must not accept calls it cannot answer.
    let listener = bind(&sc.listen).await?;
    let address = match &sc.advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    let coordinator =
        RemoteCoordinator::connect(&config.cluster.coordinators, COORDINATOR_WAIT).await?;
    let node = StreamingNode::open_unowned(
        wal,
        meta.clone(),
        open_store(config)?,
        coordinator,
        standalone::streaming_options(config),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let mut sharing = tokio::spawn(share_shards(
        node.clone(),
        meta,
        address,
        lease_ttl(config),
        stop_rx,
    ));
    let service = NodeService::new(filter_functions()).with_streaming(node);
    let serving = serve("streaming node", listener, service, shutdown_signal());
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => {
            result?;
            // Hand every shard over before exiting, so the others take
            // them at once instead of after the lease expires.
            let _ = stop_tx.send(());
            match tokio::time::timeout(Duration::from_secs(30), sharing).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %format!("{e:#}"), "handing shards over failed"),
                Err(_) => tracing::warn!("handing shards over took too long"),
                _ => tracing::info!("shards handed over"),
            }
        }
        outcome = &mut sharing => {
            let error = match outcome {
                Ok(Ok(())) => "shard sharing stopped".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            };
            tracing::error!(%error, "streaming node stops serving shards; exiting at once");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// Opens the WAL. A local WAL directory is open in one process at a time:
/// a second streaming node on it stands by until the first exits (a
/// Kafka WAL lets every streaming node share the shards).
async fn open_shared_wal(config: &Config) -> anyhow::Result<Arc<dyn quiver_wal::Wal>> {
    let mut standing_by = false;
    loop {
        match config.open_wal().await {
            Ok(wal) => return Ok(wal),
            Err(quiver_wal::WalError::AlreadyOpen { dir }) => {
                if !standing_by {
                    tracing::info!(dir = %dir.display(), "another streaming node holds the local WAL; standing by");
                    standing_by = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens the meta store and waits until this process leads `key`. A
/// standby waits here as long as another process leads; etcd failures
/// meanwhile are waited out, not fatal.
async fn lead(
    config: &Config,
    role: &str,
    key: &str,
    address: &str,
) -> anyhow::Result<(Arc<dyn MetaStore>, Leadership)> {
    let ttl = lease_ttl(config);
    let meta = retry_storage("opening the meta store", || async {
        Ok(config.open_meta_store().await?)
    })
    .await?;
    tracing::info!(%address, "{role} standing by for leadership");
    let value = serde_json::to_vec(address)?;
    let leadership = loop {
        match meta.campaign(key, value.clone(), ttl).await {
            Ok(leadership) => break leadership,
            Err(e) => {
                tracing::warn!(error = %e, "{role} election failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(%address, "{role} elected leader");
    Ok((meta, leadership))
}

/// Listens and serves until a shutdown signal, then resigns so that a
/// standby takes over at once. Resigning only after serving stopped keeps
/// two leaders from acting together; the process exits right after, which
/// ends the role's background work (flushes, ticks) too.
///
/// Lost leadership (the lease could not be renewed) ends the process at
/// once, without draining: another process may lead already.
async fn serve_while_leading(
    role: &str,
    listen: &str,
    service: NodeService,
    mut leadership: Leadership,
) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    let role_name = role.to_string();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => leadership,
            _ = leadership.lost() => {
                tracing::error!("{role_name} lost its leadership (etcd lease not renewed); exiting at once");
                std::process::exit(1);
            }
        }
    };
    let (leadership_tx, leadership_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let leadership = stop.await;
        let _ = leadership_tx.send(leadership);
    };
    serve(role, listener, service, stop).await?;
    if let Ok(leadership) = leadership_rx.await {
        leadership.resign().await;
        tracing::info!("{role} resigned leadership");
    }
    Ok(())
}

pub async fn run_proxy(config: &Config) -> anyhow::Result<()> {
    let coordinator =
        RemoteCoordinator::connect(&config.cluster.coordinators, COORDINATOR_WAIT).await?;
    let peers = RemoteStreamingNode::connect_all(&config.cluster.streaming_nodes)?;
    let streaming = ShardRouter::new(peers, config.coordinator.shards, coordinator.clone());
    let engine = standalone::engine(
        config,
        Backends {
            coordinator,
            streaming,
        },
    )?;
    standalone::serve_frontend(config, engine, "proxy").await
}

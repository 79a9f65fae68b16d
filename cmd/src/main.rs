//! The `quiver` binary: one subcommand per deployment shape or role
//! process. This crate only wires roles together; what each role does lives
//! in its own crate.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use quiver_cmd::{cluster, nodes, standalone};
use quiver_frontend::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "A vector SQL database that speaks PostgreSQL and pgvector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on the embedded storage backends.
    Standalone {
        /// TOML configuration file (see docs/config.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (default ./quiver-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address of the PostgreSQL protocol (default 127.0.0.1:5488).
        #[arg(long)]
        listen: Option<String>,
        /// Rows per shard before growing segments are sealed.
        #[arg(long)]
        seal_rows: Option<usize>,
        /// Shards per table (fixed once data exists).
        #[arg(long)]
        shards: Option<u32>,
    },
    /// Run the coordinator (catalog, timestamp oracle, segment placement)
    /// over gRPC/Flight, for proxies and streaming nodes that list it in
    /// `[cluster] coordinators`.
    Coordinator(NodeArgs),
    /// Own the shards (WAL, growing segments, sealing) over gRPC/Flight,
    /// for proxies that list it in `[cluster] streaming_nodes`.
    StreamingNode(NodeArgs),
    /// Serve PostgreSQL clients statelessly over the coordinator and
    /// streaming node of `[cluster]` (`--listen` sets the PostgreSQL address).
    Proxy(ProxyArgs),
    /// Serve sealed segments (search and scan) over gRPC/Flight, for a
    /// coordinator that lists this node in `[coordinator] query_nodes`.
    QueryNode(NodeArgs),
    /// Build indexes and compact segments over gRPC/Flight, for a
    /// coordinator that lists this node in `[coordinator] data_nodes`.
    DataNode(NodeArgs),
    /// Ask a role process's gRPC health service whether it serves; prints
    /// the status and exits non-zero unless it is SERVING.
    Probe {
        /// `host:port` of the node.
        address: String,
        /// The cluster's configuration, for its TLS settings
        /// (`[cluster.tls]`): a role on TLS answers only over TLS.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Parse a configuration file and print the effective configuration.
    CheckConfig { path: PathBuf },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML configuration file (the same file every process reads).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Local directory of this node's caches and scratch files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the gRPC/Flight service (overrides the role's `listen`).
    #[arg(long)]
    listen: Option<String>,
}

#[derive(clap::Args)]
struct ProxyArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Address of the gRPC health service (overrides `[frontend] health_listen`).
    #[arg(long)]
    health_listen: Option<String>,
}

impl NodeArgs {
    fn load(self, listen: fn(&mut Config) -> &mut String) -> anyhow::Result<Config> {
        let mut cfg = match self.config {
            Some(path) => Config::load(&path)?,
            None => Config::default(),
        };
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        if let Some(l) = self.listen {
            *listen(&mut cfg) = l;
        }
        install_cluster_security(&cfg)?;
        Ok(cfg)
    }
}

/// The cluster secret and TLS settings every call between roles uses.
fn install_cluster_security(cfg: &Config) -> anyhow::Result<()> {
    quiver_transport::install_cluster_secret(cfg.cluster.secret.clone());
    let tls = match &cfg.cluster.tls {
        Some(t) => Some(quiver_transport::ClusterTls::load(
            &t.cert,
            &t.key,
            &t.ca,
            t.server_name.clone(),
        )?),
        None => None,
    };
    quiver_transport::install_cluster_tls(tls);
    Ok(())
}

/// Stack of each runtime thread. Planning and executing a statement
/// recurses over its syntax tree and plan, and a statement's future is
/// large (tens of KiB unoptimised); tokio's 2 MiB default leaves little room
/// for deeply nested SQL, and a stack overflow aborts the whole server.
const RUNTIME_THREAD_STACK: usize = 8 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(RUNTIME_THREAD_STACK)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(
                "info,diskann=warn,diskann_disk=warn,diskann_providers=warn,latency_event=warn",
            )
        }))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Standalone {
            config,
            data_dir,
            listen,
            seal_rows,
            shards,
        } => {
            let mut cfg = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.frontend.listen = l;
            }
            if let Some(s) = seal_rows {
                cfg.streaming.seal_rows = s;
            }
            if let Some(s) = shards {
                cfg.coordinator.shards = s;
            }
            // Remote query and data nodes, when configured, check them.
            install_cluster_security(&cfg)?;
            let engine = standalone::start(&cfg).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "startup failed");
                e
            })?;
            standalone::serve_frontend(&cfg, engine, "standalone").await
        }
        Command::Coordinator(args) => {
            let cfg = args.load(|c| &mut c.coordinator.listen)?;
            cluster::run_coordinator(&cfg).await
        }
        Command::StreamingNode(args) => {
            let cfg = args.load(|c| &mut c.streaming.listen)?;
            cluster::run_streaming_node(&cfg).await
        }
        Command::Proxy(args) => {
            let mut cfg = args.node.load(|c| &mut c.frontend.listen)?;
            if let Some(health) = args.health_listen {
                cfg.frontend.health_listen = Some(health);
            }
            cluster::run_proxy(&cfg).await
        }
        Command::QueryNode(args) => {
            let cfg = args.load(|c| &mut c.query.listen)?;
            nodes::run_query_node(&cfg).await
        }
        Command::DataNode(args) => {
            let cfg = args.load(|c| &mut c.data.listen)?;
            nodes::run_data_node(&cfg).await
        }
        Command::Probe { address, config } => {
            if let Some(path) = config {
                install_cluster_security(&Config::load(&path)?)?;
            }
            match quiver_transport::check_health(&address, std::time::Duration::from_secs(3)).await
            {
                Ok(status) => {
                    println!("{status}");
                    if status == "SERVING" {
                        Ok(())
                    } else {
                        std::process::exit(1)
                    }
                }
                Err(e) => {
                    println!("UNREACHABLE: {}", e.message);
                    std::process::exit(1)
                }
            }
        }
        Command::CheckConfig { path } => {
            let cfg = Config::load(&path)?;
            println!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}

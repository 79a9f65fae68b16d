//! The one TOML configuration file: a section per role, a tagged enum per
//! storage backend. See `docs/config.example.toml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quiver_meta::{EmbeddedMeta, EtcdMeta, MetaError, MetaStore};
use quiver_wal::{KafkaWal, LocalWal, LocalWalOptions, Wal, WalError};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub frontend: FrontendConfig,
    pub coordinator: CoordinatorConfig,
    pub streaming: StreamingConfig,
    pub query: QueryConfig,
    pub data: DataConfig,
    pub cluster: ClusterConfig,
    pub storage: StorageConfig,
}

/// Where the processes of a cluster find each other when every role runs
/// on its own (`quiver proxy`, `quiver streaming-node`); standalone
/// ignores it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `host:port` of every `quiver coordinator` (the leader and its
    /// standbys, any order): calls go to whichever answers as leader.
    pub coordinators: Vec<String>,
    /// `host:port` of every `quiver streaming-node` (any order): they
    /// share the shards, and a proxy asks each which ones it owns.
    pub streaming_nodes: Vec<String>,
    /// Shared secret every process of the cluster presents on its calls to
    /// the others and demands on theirs (a bearer token on the gRPC/Flight
    /// calls; health probes stay open). Unset: no authentication between
    /// processes, for a cluster on a private network or loopback. Never
    /// printed by `check-config`.
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    /// TLS on every gRPC/Flight link between role processes (health
    /// included). Unset: plain text.
    pub tls: Option<ClusterTlsConfig>,
}

/// The TLS files of one role process; every process of a cluster trusts
/// the same CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// PEM certificate chain this process presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM certificate of the CA that signs every role's certificate;
    /// calls to other roles accept only certificates chaining to it.
    pub ca: PathBuf,
    /// Name every role's certificate must carry. Unset: the host of the
    /// address dialed (an IP address or DNS name in the certificate's
    /// subject alternative names).
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `HOST:PORT` the gRPC/Flight service of `quiver query-node` listens on.
    pub listen: String,
    /// Address other processes reach this query node at, when it differs
    /// from `listen` (e.g. `listen = "0.0.0.0:5490"`); registered in the
    /// meta store.
    pub advertise: Option<String>,
    /// Local cache of segment index files (`DATA_DIR/index-cache` if unset).
    pub index_cache_dir: Option<PathBuf>,
    /// Size limit of the index cache in MiB; least recently used go first.
    pub index_cache_mb: u64,
    /// Concurrent searches one opened index serves.
    pub search_threads: usize,
    /// Raw vectors of indexed segments, read from disk instead of kept in
    /// memory (`DATA_DIR/vector-cache` if unset).
    pub vector_cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `HOST:PORT` the gRPC/Flight service of `quiver data-node` listens on.
    pub listen: String,
    /// Address registered for other processes when it differs from `listen`.
    pub advertise: Option<String>,
    /// Threads one index build uses.
    pub build_threads: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            listen: "127.0.0.1:5490".to_string(),
            advertise: None,
            index_cache_dir: None,
            index_cache_mb: 10 * 1024,
            search_threads: 8,
            vector_cache_dir: None,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            listen: "127.0.0.1:5491".to_string(),
            advertise: None,
            build_threads: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendConfig {
    /// `HOST:PORT` the PostgreSQL protocol listens on.
    pub listen: String,
    /// `HOST:PORT` of a gRPC health service (`grpc.health.v1`, as every
    /// node process serves), for orchestrators' probes; none when unset.
    pub health_listen: Option<String>,
    /// Staleness bound of `SET quiver.consistency = 'bounded'`, in milliseconds.
    pub bounded_staleness_ms: u64,
    /// Most memory one transaction block may buffer before COMMIT (MiB);
    /// beyond it the statement fails with 54000.
    pub transaction_buffer_mb: u64,
    /// How clients prove who they are.
    pub auth: AuthMethod,
    /// Users besides `postgres` (with `scram-sha-256`, every user who may
    /// log in, `postgres` included, needs an entry here).
    pub users: Vec<UserConfig>,
    /// TLS for client connections.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuthMethod {
    /// No password (the embedded default; meant for loopback).
    #[default]
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Refuse connections that do not negotiate TLS (`sslmode=require`).
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// `HOST:PORT` the gRPC/Flight service of `quiver coordinator` listens on.
    pub listen: String,
    /// Address the leading coordinator publishes in etcd when it differs
    /// from `listen`.
    pub advertise: Option<String>,
    /// Shards per table; each shard is one WAL channel. Fixed once data exists.
    pub shards: u32,
    /// Sealed segments with fewer rows get no vector index (searched exactly).
    pub min_index_rows: u64,
    /// Query-node processes (`host:port` of `quiver query-node`) that serve
    /// sealed segments; empty: one query node inside this process.
    pub query_nodes: Vec<String>,
    /// Also use the query nodes registered in the meta store (needs
    /// `[storage.meta] kind = "etcd"`; `quiver query-node` registers itself
    /// there). With it, no query node runs inside this process.
    pub discover_query_nodes: bool,
    /// Also use the data nodes registered in the meta store (etcd;
    /// `quiver data-node` registers itself there).
    pub discover_data_nodes: bool,
    /// Data-node processes (`quiver data-node`) that build indexes and
    /// compact; empty: one data node inside this process.
    pub data_nodes: Vec<String>,
    /// How often query nodes are probed, in milliseconds.
    pub node_probe_interval_ms: u64,
    /// A query node unreachable this long is dead: its segments move to
    /// the live ones (queries meanwhile fail with a retryable error).
    pub node_failure_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// `HOST:PORT` the gRPC/Flight service of `quiver streaming-node`
    /// listens on.
    pub listen: String,
    /// Address the leading streaming node publishes in etcd when it
    /// differs from `listen`.
    pub advertise: Option<String>,
    /// Rows a shard's growing segments may hold before they are sealed.
    pub seal_rows: usize,
    /// Interval of time ticks on idle shards, in milliseconds.
    pub tick_interval_ms: u64,
    /// How often shards look for segments to compact, in milliseconds
    /// (0: only `VACUUM` compacts).
    pub compaction_interval_ms: u64,
    /// Fraction of deleted rows at which a sealed segment is rewritten.
    pub compaction_deleted_ratio: f64,
    /// Insert-only statements (bulk `COPY`, large `INSERT ... SELECT`) of
    /// at least this many rows are written straight to sealed segments,
    /// committed in the meta store, instead of through the WAL (0: never).
    pub direct_seal_rows: usize,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub wal: WalConfig,
    pub meta: MetaConfig,
    pub object: ObjectConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum WalConfig {
    /// Segmented, checksummed, fsync'd log files under `DATA_DIR/wal` (or `dir`).
    Local {
        #[serde(default)]
        dir: Option<PathBuf>,
    },
    /// One partition per shard of a topic on a Kafka-protocol broker:
    /// `brokers`, `topic`, `replication_factor`, `delivery_timeout_ms`,
    /// `properties` (extra librdkafka settings).
    Kafka(quiver_wal::KafkaWalConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum MetaConfig {
    /// Op-logged key-value store under `DATA_DIR/meta` (or `dir`).
    Embedded {
        #[serde(default)]
        dir: Option<PathBuf>,
    },
    /// Keys under `root` in an etcd cluster: `endpoints`, `root`,
    /// `username`, `password`, `timeout_ms`, `max_txn_ops`.
    Etcd(quiver_meta::EtcdConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ObjectConfig {
    /// A local directory, `DATA_DIR/objects` unless `root` is set.
    Local {
        #[serde(default)]
        root: Option<PathBuf>,
    },
    /// An S3-compatible bucket: `bucket`, `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `path_style`, `allow_http`.
    S3(quiver_segment::S3Config),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./quiver-data"),
            frontend: FrontendConfig::default(),
            coordinator: CoordinatorConfig::default(),
            streaming: StreamingConfig::default(),
            query: QueryConfig::default(),
            data: DataConfig::default(),
            cluster: ClusterConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            listen: "127.0.0.1:5488".into(),
            health_listen: None,
            bounded_staleness_ms: 1_000,
            transaction_buffer_mb: 1_024,
            auth: AuthMethod::Trust,
            users: Vec::new(),
            tls: None,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:5492".to_string(),
            advertise: None,
            shards: 2,
            min_index_rows: 1_000,
            query_nodes: Vec::new(),
            discover_query_nodes: false,
            discover_data_nodes: false,
            data_nodes: Vec::new(),
            node_probe_interval_ms: 1_000,
            node_failure_timeout_ms: 3_000,
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            listen: "127.0.0.1:5493".to_string(),
            advertise: None,
            seal_rows: 100_000,
            tick_interval_ms: 50,
            compaction_interval_ms: 10_000,
            compaction_deleted_ratio: 0.2,
            direct_seal_rows: 10_000,
        }
    }
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig::Local { dir: None }
    }
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig::Embedded { dir: None }
    }
}

impl Default for ObjectConfig {
    fn default() -> Self {
        ObjectConfig::Local { root: None }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Ok(Self::from_toml(&text)?)
    }

    /// Opens the configured WAL with one channel per shard.
    pub async fn open_wal(&self) -> Result<Arc<dyn Wal>, WalError> {
        let channels = self.coordinator.shards;
        Ok(match &self.storage.wal {
            WalConfig::Local { dir } => Arc::new(
                LocalWal::open(LocalWalOptions::new(
                    dir.clone().unwrap_or_else(|| self.data_dir.join("wal")),
                    channels,
                ))
                .await?,
            ),
            WalConfig::Kafka(kafka) => Arc::new(KafkaWal::open(kafka.clone(), channels).await?),
        })
    }

    /// Opens the configured meta store.
    pub async fn open_meta_store(&self) -> Result<Arc<dyn MetaStore>, MetaError> {
        Ok(match &self.storage.meta {
            MetaConfig::Embedded { dir } => Arc::new(EmbeddedMeta::open(
                dir.clone().unwrap_or_else(|| self.data_dir.join("meta")),
            )?),
            MetaConfig::Etcd(etcd) => Arc::new(EtcdMeta::connect(etcd).await?),
        })
    }

    pub fn index_cache_dir(&self) -> PathBuf {
        self.query
            .index_cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("index-cache"))
    }

    pub fn vector_cache_dir(&self) -> PathBuf {
        self.query
            .vector_cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("vector-cache"))
    }

    /// Where segments and indexes are stored.
    pub fn object_store(&self) -> quiver_segment::ObjectStoreConfig {
        match &self.storage.object {
            ObjectConfig::Local { root } => quiver_segment::ObjectStoreConfig::Local {
                root: root
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("objects")),
            },
            ObjectConfig::S3(s3) => quiver_segment::ObjectStoreConfig::S3(s3.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../docs/config.example.toml");
        let config = Config::from_toml(text).expect("example config must parse");
        assert_eq!(config.frontend.listen, "127.0.0.1:5488");
        assert!(matches!(config.storage.wal, WalConfig::Local { .. }));
    }

    #[test]
    fn auth_and_tls_sections_parse() {
        let config = Config::from_toml(
            "[frontend]\nauth = 'scram-sha-256'\nusers = [{ name = 'app', password = 'p w' }]\n\
             [frontend.tls]\ncert = 'c.pem'\nkey = 'k.pem'\nrequired = true\n",
        )
        .unwrap();
        assert_eq!(config.frontend.auth, AuthMethod::ScramSha256);
        assert_eq!(config.frontend.users[0].password, "p w");
        let tls = config.frontend.tls.unwrap();
        assert!(tls.required && tls.key == Path::new("k.pem"));
        assert!(Config::from_toml("[frontend]\nauth = 'md5'\n").is_err());
        let cluster = Config::from_toml(
            "[cluster.tls]\ncert = 'n.crt'\nkey = 'n.key'\nca = 'ca.crt'\nserver_name = 'q.internal'\n",
        )
        .unwrap()
        .cluster
        .tls
        .unwrap();
        assert_eq!(cluster.ca, Path::new("ca.crt"));
        assert_eq!(cluster.server_name.as_deref(), Some("q.internal"));
        // A typo is an error, not a silently plain-text cluster.
        assert!(Config::from_toml("[cluster.tls]\ncert = 'a'\nkey = 'b'\ncaa = 'c'\n").is_err());
    }

    #[test]
    fn etcd_meta_section_parses_with_defaults() {
        let config = Config::from_toml(
            "[storage.meta]\nkind = 'etcd'\nendpoints = ['http://127.0.0.1:2379']\n",
        )
        .unwrap();
        let MetaConfig::Etcd(etcd) = config.storage.meta else {
            panic!("expected etcd: {:?}", config.storage.meta);
        };
        assert_eq!(etcd.root, "/quiver");
        assert_eq!(etcd.max_txn_ops, 128);
        assert!(Config::from_toml("[storage.meta]\nkind = 'etcd'\n").is_err());
    }

    #[test]
    fn kafka_wal_section_parses_with_defaults() {
        let config =
            Config::from_toml("[storage.wal]\nkind = 'kafka'\nbrokers = '127.0.0.1:9092'\n")
                .unwrap();
        let WalConfig::Kafka(kafka) = config.storage.wal else {
            panic!("expected kafka: {:?}", config.storage.wal);
        };
        assert_eq!(kafka.topic, "quiver-wal");
        assert_eq!(kafka.delivery_timeout_ms, 10_000);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("[frontend]\nlisten_on = 'x'\n").is_err());
    }
}

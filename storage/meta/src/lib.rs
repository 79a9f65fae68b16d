//! The meta store: a small, strongly consistent key-value store holding the
//! catalog, segment manifests, WAL checkpoints and timestamp-oracle windows.
//!
//! [`MetaStore`] is the boundary trait; [`EmbeddedMeta`] is the standalone
//! implementation (an in-memory ordered map made durable by an fsync'd,
//! checksummed operation log in the data directory); [`EtcdMeta`] keeps the
//! same keys in etcd for clusters. Keys are UTF-8 paths
//! such as `/tables/7`; values are opaque bytes (JSON documents by convention,
//! see [`get_json`]/[`put_json_op`]).

mod embedded;
mod etcd;
pub mod keys;
mod lease;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use embedded::EmbeddedMeta;
pub use etcd::{EtcdConfig, EtcdMeta};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("meta store I/O failed: {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("meta store log is corrupt at byte {offset}")]
    Corrupt { offset: u64 },
    #[error("meta value at {key} is not valid: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("compare-and-swap on {key} failed: the value changed")]
    Conflict { key: String },
    #[error("meta store request failed: {context}")]
    Remote {
        context: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("meta store configuration: {0}")]
    Config(String),
}

/// One change inside an atomic [`MetaStore::batch`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MetaOp {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Deletes every key starting with the prefix.
    DeletePrefix {
        prefix: String,
    },
}

#[async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError>;
    /// All `(key, value)` pairs whose key starts with `prefix`, in key order.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetaError>;
    /// Applies all ops atomically and durably: after a crash either all or none are visible.
    async fn batch(&self, ops: Vec<MetaOp>) -> Result<(), MetaError>;
    /// Puts `value` only if the current value equals `expected` (`None` = absent).
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<(), MetaError>;

    /// Publishes `key = value` while this process keeps the returned guard:
    /// the entry goes when the guard is dropped, or `ttl` after the process
    /// stops renewing it (crash, partition). Only a shared store (etcd) can
    /// do this; the embedded store is private to one process.
    async fn register(
        &self,
        key: &str,
        _value: Vec<u8>,
        _ttl: std::time::Duration,
    ) -> Result<Registration, MetaError> {
        Err(MetaError::Config(format!(
            "registering {key} needs a meta store shared by the processes (kind = \"etcd\")"
        )))
    }

    /// Waits until this process alone holds `key` (leader election): the
    /// key is created with `value` on a lease of `ttl` only while absent,
    /// and vanishes `ttl` after its holder stops renewing it. Only a
    /// shared store can elect; the embedded store refuses.
    async fn campaign(
        &self,
        key: &str,
        _value: Vec<u8>,
        _ttl: std::time::Duration,
    ) -> Result<Leadership, MetaError> {
        Err(MetaError::Config(format!(
            "electing a leader for {key} needs a meta store shared by the processes (kind = \"etcd\")"
        )))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), MetaError> {
        self.batch(vec![MetaOp::Put {
            key: key.to_string(),
            value,
        }])
        .await
    }
}

/// Reads and decodes a JSON value.
pub async fn get_json<T: DeserializeOwned>(
    meta: &dyn MetaStore,
    key: &str,
) -> Result<Option<T>, MetaError> {
    match meta.get(key).await? {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| MetaError::Decode {
                    key: key.to_string(),
                    source,
                })
        }
    }
}

/// Decodes every JSON value under a prefix.
pub async fn scan_json<T: DeserializeOwned>(
    meta: &dyn MetaStore,
    prefix: &str,
) -> Result<Vec<(String, T)>, MetaError> {
    meta.scan_prefix(prefix)
        .await?
        .into_iter()
        .map(|(key, bytes)| match serde_json::from_slice(&bytes) {
            Ok(v) => Ok((key, v)),
            Err(source) => Err(MetaError::Decode { key, source }),
        })
        .collect()
}

/// A `Put` op of a JSON-encoded value.
pub fn put_json_op<T: Serialize>(key: impl Into<String>, value: &T) -> MetaOp {
    MetaOp::Put {
        key: key.into(),
        // Serializing plain data structs to JSON cannot fail.
        value: serde_json::to_vec(value).unwrap_or_default(),
    }
}

/// Keeps a [`MetaStore::register`]ed entry alive. [`Registration::release`]
/// removes the entry; dropping the guard stops renewing it and removes it
/// if a runtime is still there to do so (otherwise it expires with its time
/// to live).
pub struct Registration {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
    remove: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Registration {
    pub fn new(
        stop: impl FnOnce() + Send + Sync + 'static,
        remove: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        Registration {
            stop: Some(Box::new(stop)),
            remove: Some(Box::pin(remove)),
        }
    }

    /// Stops renewing and removes the entry now.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(remove) = self.remove.take() {
            remove.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let (Some(remove), Ok(runtime)) =
            (self.remove.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(remove);
        }
    }
}

/// Leadership won by [`MetaStore::campaign`], held while its lease is
/// renewed. [`Leadership::resign`] hands it over at once; dropping the guard
/// does too (when a runtime is there to revoke the lease).
pub struct Leadership {
    registration: Registration,
    lost: tokio::sync::watch::Receiver<bool>,
    term: u64,
}

impl Leadership {
    pub fn new(
        registration: Registration,
        lost: tokio::sync::watch::Receiver<bool>,
        term: u64,
    ) -> Self {
        Leadership {
            registration,
            lost,
            term,
        }
    }

    /// Grows with every leadership won for the key: a later leader has a
    /// larger term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Completes when leadership is lost (its lease could not be renewed):
    /// another process may lead from then on, so the holder must stop
    /// acting as leader at once.
    pub async fn lost(&mut self) {
        while !*self.lost.borrow_and_update() {
            if self.lost.changed().await.is_err() {
                return;
            }
        }
    }

    pub async fn resign(self) {
        self.registration.release().await;
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leadership")
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registration")
    }
}

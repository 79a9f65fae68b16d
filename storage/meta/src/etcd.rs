//! The meta store on etcd (v3 API, `etcd-client`): every key lives under a
//! configurable root prefix so several Quiver clusters (or test runs) can
//! share one etcd. Batches are single etcd transactions, so they are atomic
//! and durable (etcd's raft log is fsync'd before it answers).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, LeaseClient,
    Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use crate::{MetaError, MetaOp, MetaStore};

/// Keys fetched per range request while scanning a prefix: keeps each
/// response far below gRPC's 4 MiB message limit.
const SCAN_PAGE: i64 = 512;

/// `[storage.meta] kind = "etcd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Every Quiver key is stored under this prefix (no trailing slash).
    #[serde(default = "default_root")]
    pub root: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Deadline of one etcd request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The server's `--max-txn-ops` (etcd's default is 128). A batch with more
    /// operations fails with a clear error before it is sent.
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
}

fn default_root() -> String {
    "/quiver".into()
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_max_txn_ops() -> usize {
    128
}

/// The meta store of a cluster (or of a standalone node that keeps its
/// metadata in etcd).
#[derive(Clone)]
pub struct EtcdMeta {
    kv: KvClient,
    lease: LeaseClient,
    root: String,
    max_txn_ops: usize,
}

impl std::fmt::Debug for EtcdMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMeta")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn remote(context: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> MetaError {
    let context = context.into();
    move |source| MetaError::Remote { context, source }
}

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or empty): the range runs to the end of the keyspace.
    vec![0]
}

/// The key right after `key` in etcd's byte order.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl EtcdMeta {
    /// Connects and checks that etcd answers (a clear error at start-up
    /// beats a hang on the first catalog read).
    pub async fn connect(config: &EtcdConfig) -> Result<Self, MetaError> {
        if config.endpoints.is_empty() {
            return Err(MetaError::Config(
                "storage.meta: kind = \"etcd\" needs at least one endpoint".into(),
            ));
        }
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let mut options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                // Login tokens expire (and do not survive an etcd restart).
                options = options
                    .with_user(user, password)
                    .with_auto_token_refresh(true);
            }
            (None, None) => {}
            _ => {
                return Err(MetaError::Config(
                    "storage.meta: set both username and password, or neither".into(),
                ));
            }
        }
        let root = config.root.trim_end_matches('/');
        if root.is_empty() {
            return Err(MetaError::Config(
                "storage.meta: root must be a non-empty prefix such as \"/quiver\"".into(),
            ));
        }
        let endpoints = config.endpoints.join(",");
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(remote(format!("connecting to etcd at {endpoints}")))?;
        let meta = EtcdMeta {
            kv: client.kv_client(),
            lease: client.lease_client(),
            root: root.to_string(),
            max_txn_ops: config.max_txn_ops.max(1),
        };
        meta.kv
            .clone()
            .get(meta.full_key("/"), None)
            .await
            .map_err(remote(format!("reading from etcd at {endpoints}")))?;
        Ok(meta)
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.root).into_bytes()
    }

    fn strip_root(&self, key: &[u8]) -> Result<String, MetaError> {
        let key = key.strip_prefix(self.root.as_bytes()).unwrap_or(key);
        String::from_utf8(key.to_vec()).map_err(|_| MetaError::Corrupt { offset: 0 })
    }

    /// Whether the store shows a batch's whole effect (read in one
    /// snapshot): every put key holds its value and every deleted key or
    /// range is empty. `false` when etcd cannot be read either.
    async fn batch_effect_visible(&self, net: &[EtcdOp]) -> bool {
        let reads: Vec<TxnOp> = net
            .iter()
            .map(|op| match op {
                EtcdOp::Put(key, _) | EtcdOp::Delete(key) => TxnOp::get(key.clone(), None),
                EtcdOp::DeleteRange(from, end) => TxnOp::get(
                    from.clone(),
                    Some(GetOptions::new().with_range(end.clone()).with_count_only()),
                ),
            })
            .collect();
        let Ok(resp) = self.kv.clone().txn(Txn::new().and_then(reads)).await else {
            return false;
        };
        let responses = resp.op_responses();
        responses.len() == net.len()
            && net.iter().zip(responses).all(|(op, resp)| {
                let TxnOpResponse::Get(get) = resp else {
                    return false;
                };
                match op {
                    EtcdOp::Put(_, value) => {
                        get.kvs().first().is_some_and(|kv| kv.value() == value)
                    }
                    EtcdOp::Delete(_) => get.kvs().is_empty(),
                    EtcdOp::DeleteRange(..) => get.count() == 0,
                }
            })
    }
}

fn txn_ops(net: &[EtcdOp]) -> Vec<TxnOp> {
    net.iter()
        .map(|op| match op {
            EtcdOp::Put(key, value) => TxnOp::put(key.clone(), value.clone(), None),
            EtcdOp::Delete(key) => TxnOp::delete(key.clone(), None),
            EtcdOp::DeleteRange(from, end) => TxnOp::delete(
                from.clone(),
                Some(DeleteOptions::new().with_range(end.clone())),
            ),
        })
        .collect()
}

/// One operation of an etcd transaction.
#[derive(Debug, PartialEq)]
enum EtcdOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes the keys in `[from, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Reduces a batch to etcd operations with the same effect.
///
/// etcd refuses a transaction that touches one key twice or puts a key
/// inside a range it also deletes, while our batches may (e.g. "drop the old
/// manifests under this prefix, write the new one"). So the batch is reduced
/// to its net effect, and a deleted prefix that also holds a put key becomes
/// the ranges between the put keys.
fn net_effect(ops: Vec<MetaOp>, full_key: impl Fn(&str) -> Vec<u8>) -> Vec<EtcdOp> {
    let mut keys: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut deleted_prefixes: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        match op {
            MetaOp::Put { key, value } => {
                keys.insert(full_key(&key), Some(value));
            }
            MetaOp::Delete { key } => {
                keys.insert(full_key(&key), None);
            }
            MetaOp::DeletePrefix { prefix } => {
                let prefix = full_key(&prefix);
                keys.retain(|k, _| !k.starts_with(&prefix));
                deleted_prefixes.retain(|p| !p.starts_with(&prefix));
                if !deleted_prefixes.iter().any(|p| prefix.starts_with(p)) {
                    deleted_prefixes.push(prefix);
                }
            }
        }
    }
    let mut out = Vec::new();
    for prefix in deleted_prefixes {
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        for key in keys
            .range(prefix.clone()..end.clone())
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
        {
            if from < *key {
                out.push(EtcdOp::DeleteRange(from.clone(), key.clone()));
            }
            from = successor(key);
        }
        out.push(EtcdOp::DeleteRange(from, end));
        // Single-key deletes inside the prefix are covered by its ranges.
        keys.retain(|k, v| v.is_some() || !k.starts_with(&prefix));
    }
    for (key, value) in keys {
        out.push(match value {
            Some(value) => EtcdOp::Put(key, value),
            None => EtcdOp::Delete(key),
        });
    }
    out
}

#[async_trait]
impl MetaStore for EtcdMeta {
    async fn register(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<crate::Registration, MetaError> {
        crate::lease::register(
            self.kv.clone(),
            self.lease.clone(),
            self.full_key(key),
            value,
            ttl,
        )
        .await
    }

    async fn campaign(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<crate::Leadership, MetaError> {
        crate::lease::campaign(
            self.kv.clone(),
            self.lease.clone(),
            self.full_key(key),
            value,
            ttl,
        )
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        let mut resp = self
            .kv
            .clone()
            .get(self.full_key(key), None)
            .await
            .map_err(remote(format!("etcd get {key}")))?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.value().to_vec()))
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        let full = self.full_key(prefix);
        let end = prefix_end(&full);
        let mut out = Vec::new();
        let mut from = full;
        // Pages are read at the first page's revision so the scan is one
        // consistent snapshot, as the embedded store's is.
        let mut revision = 0;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SCAN_PAGE)
                .with_revision(revision);
            let mut resp = self
                .kv
                .clone()
                .get(from.clone(), Some(options))
                .await
                .map_err(remote(format!("etcd scan {prefix}")))?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else {
                break;
            };
            for kv in kvs {
                out.push((self.strip_root(kv.key())?, kv.value().to_vec()));
            }
            if !more {
                break;
            }
            from = successor(&last);
        }
        Ok(out)
    }

    async fn batch(&self, ops: Vec<MetaOp>) -> Result<(), MetaError> {
        let net = net_effect(ops, |key| self.full_key(key));
        let ops = txn_ops(&net);
        if ops.is_empty() {
            return Ok(());
        }
        if ops.len() > self.max_txn_ops {
            return Err(MetaError::Config(format!(
                "a metadata batch needs {} etcd operations but storage.meta.max_txn_ops is {}; \
                 start etcd with a larger --max-txn-ops and raise max_txn_ops to match",
                ops.len(),
                self.max_txn_ops
            )));
        }
        let count = ops.len();
        let Err(error) = self.kv.clone().txn(Txn::new().and_then(ops)).await else {
            return Ok(());
        };
        // A timeout or a leader change can fail a transaction that etcd
        // applied anyway. Callers treat an error as "nothing happened" (a
        // flush would seal the same rows again), so look before reporting.
        if self.batch_effect_visible(&net).await {
            tracing::warn!(error = %error, "etcd reported a failed transaction that was applied");
            return Ok(());
        }
        Err(MetaError::Remote {
            context: format!("etcd transaction of {count} operations"),
            source: error,
        })
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<(), MetaError> {
        let full = self.full_key(key);
        let guard = match expected {
            // A key that never existed (or was deleted) has create revision 0.
            None => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Some(expected) => Compare::value(full.clone(), CompareOp::Equal, expected),
        };
        let resp = self
            .kv
            .clone()
            .txn(
                Txn::new()
                    .when(vec![guard])
                    .and_then(vec![TxnOp::put(full, value, None)]),
            )
            .await
            .map_err(remote(format!("etcd compare-and-put {key}")))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(MetaError::Conflict {
                key: key.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    fn key(k: &str) -> Vec<u8> {
        format!("/r{k}").into_bytes()
    }

    #[test]
    fn batches_reduce_to_their_net_effect() {
        let ops = vec![
            MetaOp::Put {
                key: "/a/1".into(),
                value: b"x".to_vec(),
            },
            MetaOp::Delete { key: "/b".into() },
            MetaOp::Put {
                key: "/b".into(),
                value: b"y".to_vec(),
            },
            MetaOp::Delete { key: "/c".into() },
        ];
        assert_eq!(
            net_effect(ops, key),
            vec![
                EtcdOp::Put(key("/a/1"), b"x".to_vec()),
                EtcdOp::Put(key("/b"), b"y".to_vec()),
                EtcdOp::Delete(key("/c")),
            ]
        );
    }

    #[test]
    fn a_deleted_prefix_skips_the_keys_put_under_it() {
        let ops = vec![
            MetaOp::Put {
                key: "/s/old".into(),
                value: b"gone".to_vec(),
            },
            MetaOp::DeletePrefix {
                prefix: "/s/".into(),
            },
            MetaOp::Put {
                key: "/s/k1".into(),
                value: b"1".to_vec(),
            },
            MetaOp::Delete {
                key: "/s/k2".into(),
            },
            MetaOp::Put {
                key: "/s/k3".into(),
                value: b"3".to_vec(),
            },
            MetaOp::DeletePrefix {
                prefix: "/s/sub/".into(),
            },
        ];
        let mut after_k1 = key("/s/k1");
        after_k1.push(0);
        let mut after_k3 = key("/s/k3");
        after_k3.push(0);
        assert_eq!(
            net_effect(ops, key),
            vec![
                EtcdOp::DeleteRange(key("/s/"), key("/s/k1")),
                EtcdOp::DeleteRange(after_k1, key("/s/k3")),
                EtcdOp::DeleteRange(after_k3, key("/s0")),
                EtcdOp::Put(key("/s/k1"), b"1".to_vec()),
                EtcdOp::Put(key("/s/k3"), b"3".to_vec()),
            ]
        );
    }
}

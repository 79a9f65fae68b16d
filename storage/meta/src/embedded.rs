//! Hand-written because the embedded store needs only an ordered map plus a
//! durable op log; sled/redb would add a second storage engine (and its
//! on-disk format) for a few kilobytes of metadata.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{MetaError, MetaOp, MetaStore};

const LOG_FILE: &str = "meta.log";
/// Rewrite the log as a snapshot once it holds this many more bytes than the live data.
const COMPACT_SLACK_BYTES: u64 = 8 << 20;

#[derive(Debug)]
struct State {
    map: BTreeMap<String, Vec<u8>>,
    log: File,
    log_bytes: u64,
}

/// The standalone meta store: an in-memory map plus an fsync'd op log.
#[derive(Debug, Clone)]
pub struct EmbeddedMeta {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MetaError {
    let context = context.into();
    move |source| MetaError::Io { context, source }
}

fn frame(ops: &[MetaOp]) -> Vec<u8> {
    let payload = serde_json::to_vec(ops).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn apply(map: &mut BTreeMap<String, Vec<u8>>, ops: Vec<MetaOp>) {
    for op in ops {
        match op {
            MetaOp::Put { key, value } => {
                map.insert(key, value);
            }
            MetaOp::Delete { key } => {
                map.remove(&key);
            }
            MetaOp::DeletePrefix { prefix } => {
                let doomed: Vec<String> = map
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    map.remove(&k);
                }
            }
        }
    }
}

/// Replays the log; returns the map and the length of its valid prefix.
fn replay(bytes: &[u8]) -> (BTreeMap<String, Vec<u8>>, u64) {
    let mut map = BTreeMap::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(ops) = serde_json::from_slice::<Vec<MetaOp>>(payload) else {
            break;
        };
        apply(&mut map, ops);
        pos += 8 + len;
    }
    (map, pos as u64)
}

fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("fsync {}", dir.display())))
}

impl EmbeddedMeta {
    /// Opens (or creates) the store in `dir`, truncating a torn last record.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, MetaError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io(format!("read {}", path.display())))?;
        }
        let (map, valid) = replay(&bytes);
        if valid < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                valid,
                total = bytes.len(),
                "meta log has a torn tail; truncating it"
            );
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        log.set_len(valid)
            .and_then(|_| log.sync_all())
            .map_err(io(format!("truncate {}", path.display())))?;
        sync_dir(&dir)?;
        Ok(EmbeddedMeta {
            dir,
            state: Arc::new(Mutex::new(State {
                map,
                log,
                log_bytes: valid,
            })),
        })
    }

    fn write_locked(&self, state: &mut State, ops: Vec<MetaOp>) -> Result<(), MetaError> {
        let bytes = frame(&ops);
        state
            .log
            .write_all(&bytes)
            .and_then(|_| state.log.sync_data())
            .map_err(io("append to meta log"))?;
        state.log_bytes += bytes.len() as u64;
        apply(&mut state.map, ops);
        let live: u64 = state
            .map
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64 + 32)
            .sum();
        if state.log_bytes > live.saturating_mul(2) + COMPACT_SLACK_BYTES {
            self.compact_locked(state)?;
        }
        Ok(())
    }

    /// Rewrites the log as one snapshot record (write temp, fsync, rename).
    fn compact_locked(&self, state: &mut State) -> Result<(), MetaError> {
        let ops: Vec<MetaOp> = state
            .map
            .iter()
            .map(|(k, v)| MetaOp::Put {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let bytes = frame(&ops);
        let tmp = self.dir.join("meta.log.tmp");
        let path = self.dir.join(LOG_FILE);
        let mut f = File::create(&tmp).map_err(io("create meta snapshot"))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(io("write meta snapshot"))?;
        std::fs::rename(&tmp, &path).map_err(io("install meta snapshot"))?;
        sync_dir(&self.dir)?;
        state.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("reopen meta log"))?;
        state.log_bytes = bytes.len() as u64;
        Ok(())
    }
}

#[async_trait]
impl MetaStore for EmbeddedMeta {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.state.lock().map.get(key).cloned())
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        let state = self.state.lock();
        Ok(state
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn batch(&self, ops: Vec<MetaOp>) -> Result<(), MetaError> {
        let this = self.clone();
        // fsync blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut state = this.state.lock();
            this.write_locked(&mut state, ops)
        })
        .await
        .map_err(|e| MetaError::Io {
            context: "meta writer task".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<(), MetaError> {
        let this = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let mut state = this.state.lock();
            if state.map.get(&key) != expected.as_ref() {
                return Err(MetaError::Conflict { key });
            }
            this.write_locked(&mut state, vec![MetaOp::Put { key, value }])
        })
        .await
        .map_err(|e| MetaError::Io {
            context: "meta writer task".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = EmbeddedMeta::open(dir.path()).unwrap();
            m.put("/a/1", b"one".to_vec()).await.unwrap();
            m.put("/a/2", b"two".to_vec()).await.unwrap();
            m.batch(vec![
                MetaOp::Delete { key: "/a/1".into() },
                MetaOp::Put {
                    key: "/b".into(),
                    value: b"x".to_vec(),
                },
            ])
            .await
            .unwrap();
        }
        // a torn record at the end must be ignored
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let m = EmbeddedMeta::open(dir.path()).unwrap();
        assert_eq!(m.get("/a/1").await.unwrap(), None);
        assert_eq!(m.get("/a/2").await.unwrap(), Some(b"two".to_vec()));
        assert_eq!(m.scan_prefix("/").await.unwrap().len(), 2);
        m.put("/c", b"y".to_vec()).await.unwrap();
        drop(m);
        let m = EmbeddedMeta::open(dir.path()).unwrap();
        assert_eq!(m.get("/c").await.unwrap(), Some(b"y".to_vec()));
    }

    #[tokio::test]
    async fn compare_and_put_detects_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let m = EmbeddedMeta::open(dir.path()).unwrap();
        m.compare_and_put("/k", None, b"1".to_vec()).await.unwrap();
        assert!(m.compare_and_put("/k", None, b"2".to_vec()).await.is_err());
        m.compare_and_put("/k", Some(b"1".to_vec()), b"2".to_vec())
            .await
            .unwrap();
        m.batch(vec![MetaOp::DeletePrefix { prefix: "/".into() }])
            .await
            .unwrap();
        assert!(m.scan_prefix("/").await.unwrap().is_empty());
    }
}

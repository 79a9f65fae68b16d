//! The local index cache: segment index files fetched from the object store
//! into a directory with a size limit, evicted least-recently-used, and
//! opened DiskANN searchers for the cached ones.
//!
//! The object store is the source of truth, so anything here may vanish
//! (eviction, an operator deleting the directory) and costs only a re-fetch.
//! A directory appears under its final name only once all its files are
//! there (fetched into `NAME.partial`, then renamed), so a crash mid-fetch
//! leaves nothing that looks complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use quiver_index::{DiskAnnSearcher, IndexMetric};
use quiver_segment::{ROW_MAP_FILE, SegmentIndexMeta};
use tokio::io::AsyncWriteExt;

use crate::QueryNodeError;

#[derive(Debug, Clone)]
pub struct IndexCacheOptions {
    pub dir: PathBuf,
    /// Bytes of index files kept locally; least recently used go first.
    pub capacity_bytes: u64,
    /// Search threads per opened index (concurrent searches it serves).
    pub search_threads: usize,
    /// Raw vector files of indexed segments (emptied at start).
    pub vector_dir: PathBuf,
}

/// An opened segment index.
pub struct OpenIndex {
    pub searcher: DiskAnnSearcher,
    /// Graph id → segment row, when the segment has NULL vectors.
    pub row_map: Option<Vec<u32>>,
}

struct Entry {
    bytes: u64,
    last_used: u64,
    open: Option<Arc<OpenIndex>>,
}

pub struct IndexCache {
    store: Arc<dyn ObjectStore>,
    options: IndexCacheOptions,
    entries: Mutex<HashMap<String, Entry>>,
    clock: AtomicU64,
    /// One fetch/open at a time; searches of already open indexes never wait.
    loading: tokio::sync::Mutex<()>,
    pub fetches: AtomicU64,
}

fn cache_key(m: &SegmentIndexMeta) -> String {
    format!("{}-{}", m.segment, m.index)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl IndexCache {
    /// Opens the cache directory, keeping complete entries from earlier runs.
    pub fn open(
        store: Arc<dyn ObjectStore>,
        options: IndexCacheOptions,
    ) -> Result<Self, QueryNodeError> {
        let io = |e| QueryNodeError::Cache {
            dir: options.dir.clone(),
            source: e,
        };
        std::fs::create_dir_all(&options.dir).map_err(io)?;
        let mut entries = HashMap::new();
        for entry in std::fs::read_dir(&options.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".partial") {
                std::fs::remove_dir_all(entry.path()).map_err(io)?;
                continue;
            }
            entries.insert(
                name,
                Entry {
                    bytes: dir_size(&entry.path()),
                    last_used: 0,
                    open: None,
                },
            );
        }
        Ok(IndexCache {
            store,
            options,
            entries: Mutex::new(entries),
            clock: AtomicU64::new(1),
            loading: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        })
    }

    fn touch(&self, key: &str) -> Option<Arc<OpenIndex>> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock();
        let e = entries.get_mut(key)?;
        e.last_used = tick;
        e.open.clone()
    }

    /// The opened index, fetching its files first if they are not local.
    pub async fn open_index(
        &self,
        manifest: &SegmentIndexMeta,
        metric: IndexMetric,
    ) -> Result<Arc<OpenIndex>, QueryNodeError> {
        let key = cache_key(manifest);
        if let Some(open) = self.touch(&key) {
            return Ok(open);
        }
        let _loading = self.loading.lock().await;
        if let Some(open) = self.touch(&key) {
            return Ok(open);
        }
        let dir = self.options.dir.join(&key);
        let open = match self.open_local(&dir, manifest, metric).await {
            Ok(open) => open,
            Err(first) => {
                // Missing or damaged locally: fetch it again.
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), error = %first, "re-fetching cached index");
                }
                self.fetch(manifest, &dir).await?;
                self.open_local(&dir, manifest, metric).await?
            }
        };
        let open = Arc::new(open);
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        self.entries.lock().insert(
            key.clone(),
            Entry {
                bytes: manifest.bytes(),
                last_used: tick,
                open: Some(open.clone()),
            },
        );
        self.evict_over_capacity(&key);
        Ok(open)
    }

    async fn open_local(
        &self,
        dir: &Path,
        manifest: &SegmentIndexMeta,
        metric: IndexMetric,
    ) -> Result<OpenIndex, QueryNodeError> {
        for f in &manifest.files {
            let len = std::fs::metadata(dir.join(&f.name)).map(|m| m.len()).ok();
            if len != Some(f.bytes) {
                return Err(QueryNodeError::CacheMiss(f.name.clone()));
            }
        }
        let dir = dir.to_path_buf();
        let threads = self.options.search_threads;
        let has_row_map = manifest.has_row_map;
        tokio::task::spawn_blocking(move || {
            let searcher = DiskAnnSearcher::open(&dir, metric, threads)?;
            let row_map = if has_row_map {
                let bytes =
                    std::fs::read(dir.join(ROW_MAP_FILE)).map_err(|e| QueryNodeError::Cache {
                        dir: dir.clone(),
                        source: e,
                    })?;
                Some(
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            } else {
                None
            };
            Ok(OpenIndex { searcher, row_map })
        })
        .await?
    }

    async fn fetch(&self, manifest: &SegmentIndexMeta, dir: &Path) -> Result<(), QueryNodeError> {
        let io = |e| QueryNodeError::Cache {
            dir: dir.to_path_buf(),
            source: e,
        };
        let partial = dir.with_extension("partial");
        for d in [&partial, &dir.to_path_buf()] {
            if d.exists() {
                tokio::fs::remove_dir_all(d).await.map_err(io)?;
            }
        }
        tokio::fs::create_dir_all(&partial).await.map_err(io)?;
        for f in &manifest.files {
            let path = object_store::path::Path::from(format!("{}/{}", manifest.prefix, f.name));
            let mut stream = self.store.get(&path).await?.into_stream();
            let mut out = tokio::fs::File::create(partial.join(&f.name))
                .await
                .map_err(io)?;
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?).await.map_err(io)?;
            }
            out.flush().await.map_err(io)?;
        }
        tokio::fs::rename(&partial, dir).await.map_err(io)?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(dir = %dir.display(), bytes = manifest.bytes(), "index fetched into cache");
        Ok(())
    }

    fn evict_over_capacity(&self, keep: &str) {
        let mut victims = Vec::new();
        {
            let mut entries = self.entries.lock();
            let mut total: u64 = entries.values().map(|e| e.bytes).sum();
            while total > self.options.capacity_bytes {
                let Some(victim) = entries
                    .iter()
                    .filter(|(k, _)| k.as_str() != keep)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(e) = entries.remove(&victim) {
                    total -= e.bytes;
                }
                victims.push(victim);
            }
        }
        for v in victims {
            // Searches still holding the opened index keep their open files.
            if let Err(e) = std::fs::remove_dir_all(self.options.dir.join(&v)) {
                tracing::warn!(entry = %v, error = %e, "could not evict cached index");
            } else {
                tracing::debug!(entry = %v, "evicted cached index");
            }
        }
    }

    /// Forgets an index that was dropped.
    pub fn remove(&self, manifest: &SegmentIndexMeta) {
        let key = cache_key(manifest);
        self.entries.lock().remove(&key);
        let _ = std::fs::remove_dir_all(self.options.dir.join(key));
    }

    /// Bytes of index files held locally.
    pub fn local_bytes(&self) -> u64 {
        self.entries.lock().values().map(|e| e.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use quiver_index::{DiskAnnParams, build_disk_index, index_files};
    use quiver_segment::IndexFile;
    use quiver_types::{IndexId, SegmentId, TableId};

    /// Builds a small index and stores its files like a data node would.
    async fn stored_index(store: &Arc<dyn ObjectStore>, segment: u64) -> SegmentIndexMeta {
        let dim = 8;
        let vectors: Vec<f32> = (0..2000 * dim)
            .map(|i| ((i * 7919 + segment as usize * 31) % 1000) as f32 / 1000.0)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            build_disk_index(
                &vectors,
                dim,
                &DiskAnnParams::new(IndexMetric::L2, dim),
                &path,
            )
        })
        .await
        .unwrap()
        .unwrap();
        let prefix = format!("tables/1/segments/{segment}/index-1");
        let mut files = Vec::new();
        for name in index_files() {
            let bytes = std::fs::read(dir.path().join(&name)).unwrap();
            files.push(IndexFile {
                name: name.clone(),
                bytes: bytes.len() as u64,
            });
            store
                .put(
                    &object_store::path::Path::from(format!("{prefix}/{name}")),
                    bytes.into(),
                )
                .await
                .unwrap();
        }
        SegmentIndexMeta {
            table: TableId(1),
            segment: SegmentId(segment),
            index: IndexId(1),
            prefix,
            files,
            rows: 2000,
            has_row_map: false,
            build_ms: 0,
            built_at_ms: 0,
        }
    }

    /// Results of a search (the searcher blocks, as in production).
    async fn hits(open: Arc<OpenIndex>) -> usize {
        tokio::task::spawn_blocking(move || open.searcher.search(&[0.5f32; 8], 5, 20, None))
            .await
            .unwrap()
            .unwrap()
            .len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn least_recently_used_index_is_evicted_and_fetched_again() {
        let root = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(root.path()).unwrap());
        let a = stored_index(&store, 1).await;
        let b = stored_index(&store, 2).await;
        let cache_dir = tempfile::tempdir().unwrap();
        let options = IndexCacheOptions {
            dir: cache_dir.path().join("cache"),
            // Room for one index only.
            capacity_bytes: a.bytes() + a.bytes() / 2,
            search_threads: 1,
            vector_dir: cache_dir.path().join("vectors"),
        };
        let cache = IndexCache::open(store.clone(), options.clone()).unwrap();
        let first = cache.open_index(&a, IndexMetric::L2).await.unwrap();
        assert_eq!(hits(first.clone()).await, 5);
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 1);
        cache.open_index(&b, IndexMetric::L2).await.unwrap();
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 2);
        assert!(cache.local_bytes() <= options.capacity_bytes);
        assert!(
            !options.dir.join("0000000000000001-1").exists(),
            "a was evicted"
        );
        // The evicted index still answers searches already holding it, and
        // comes back from the object store on the next use.
        assert_eq!(hits(first.clone()).await, 5);
        drop(first);
        cache.open_index(&a, IndexMetric::L2).await.unwrap();
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 3);
        // A restart keeps what is cached; a hit costs no fetch.
        drop(cache);
        let reopened = IndexCache::open(store, options).unwrap();
        reopened.open_index(&a, IndexMetric::L2).await.unwrap();
        assert_eq!(reopened.fetches.load(Ordering::Relaxed), 0);
    }
}

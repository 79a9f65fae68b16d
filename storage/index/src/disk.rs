//! DiskANN's SSD index: build into a directory, open it for search.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use diskann::graph::config;
use diskann::utils::ONE;
use diskann_disk::build::builder::build::DiskIndexBuilder;
use diskann_disk::data_model::{AdHoc, CachingStrategy};
use diskann_disk::disk_index_build_parameter::{MemoryBudget, NumPQChunks};
use diskann_disk::search::provider::disk_provider::DiskIndexSearcher;
use diskann_disk::search::provider::disk_vertex_provider_factory::DiskVertexProviderFactory;
use diskann_disk::search::search_mode::SearchMode;
use diskann_disk::storage::DiskIndexWriter;
use diskann_disk::storage::disk_index_reader::DiskIndexReader;
use diskann_disk::{DiskIndexBuildParameters, QuantizationType};
use diskann_providers::model::IndexConfiguration;
use diskann_providers::storage::FileStorageProvider;
use diskann_vector::distance::Metric;

use crate::IndexError;
use crate::exact::normalize;
use crate::reader::PreadReaderFactory;

pub use quiver_types::VectorMetric as IndexMetric;

/// The metric DiskANN builds and searches with. Cosine indexes hold
/// unit-length vectors and search them by L2, which ranks identically and
/// keeps DiskANN on its best-tested path.
fn diskann_metric(metric: IndexMetric) -> Metric {
    match metric {
        IndexMetric::L2 | IndexMetric::Cosine => Metric::L2,
        IndexMetric::InnerProduct => Metric::InnerProduct,
    }
}

/// Build settings (the `WITH (...)` of `CREATE INDEX ... USING diskann`).
#[derive(Debug, Clone)]
pub struct DiskAnnParams {
    pub metric: IndexMetric,
    /// Graph out-degree R.
    pub max_degree: usize,
    /// Candidate list size while building (L_build).
    pub build_search_list: usize,
    /// Bytes of PQ code per vector kept in RAM for search.
    pub pq_bytes: usize,
    /// Threads the build may use.
    pub threads: usize,
}

impl DiskAnnParams {
    pub fn new(metric: IndexMetric, dim: usize) -> Self {
        DiskAnnParams {
            metric,
            max_degree: 64,
            build_search_list: 128,
            pq_bytes: dim.clamp(1, 64),
            threads: 2,
        }
    }
}

const PREFIX: &str = "index";
const BLOCK_SIZE: usize = 4096;

/// The files a built index consists of (all needed for search), relative to
/// the index directory.
pub fn index_files() -> [String; 3] {
    [
        format!("{PREFIX}_disk.index"),
        format!("{PREFIX}_pq_pivots.bin"),
        format!("{PREFIX}_pq_compressed.bin"),
    ]
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> IndexError {
    let context = context.into();
    move |source| IndexError::Io { context, source }
}

fn path_str(p: &Path) -> Result<String, IndexError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| IndexError::Invalid(format!("non-UTF-8 path {}", p.display())))
}

/// DiskANN's `.bin` input: `u32 n, u32 dim`, then row-major `f32`s.
fn write_vectors_bin(
    path: &Path,
    vectors: &[f32],
    dim: usize,
    unit_length: bool,
) -> Result<(), IndexError> {
    let n = vectors.len() / dim;
    let mut w =
        BufWriter::new(File::create(path).map_err(io(format!("create {}", path.display())))?);
    w.write_all(&(n as u32).to_le_bytes())
        .and_then(|_| w.write_all(&(dim as u32).to_le_bytes()))
        .map_err(io("write vector header"))?;
    let mut row = vec![0f32; dim];
    for v in vectors.chunks_exact(dim) {
        row.copy_from_slice(v);
        if unit_length {
            normalize(&mut row);
        }
        for x in &row {
            w.write_all(&x.to_le_bytes()).map_err(io("write vectors"))?;
        }
    }
    w.flush().map_err(io("flush vectors"))
}

/// Builds a disk index over `vectors` (`n * dim` floats, row `i` = id `i`)
/// into `dir`, which must exist. Blocking and CPU-heavy.
pub fn build_disk_index(
    vectors: &[f32],
    dim: usize,
    params: &DiskAnnParams,
    dir: &Path,
) -> Result<(), IndexError> {
    if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
        return Err(IndexError::Invalid(format!(
            "{} floats do not form vectors of dimension {dim}",
            vectors.len()
        )));
    }
    let n = vectors.len() / dim;
    let data_path = dir.join("vectors.bin");
    write_vectors_bin(
        &data_path,
        vectors,
        dim,
        params.metric == IndexMetric::Cosine,
    )?;
    let prefix = path_str(&dir.join(PREFIX))?;

    let build_params = DiskIndexBuildParameters::new(
        MemoryBudget::try_from_gb(1.0).map_err(|e| IndexError::Invalid(e.to_string()))?,
        QuantizationType::FP,
        NumPQChunks::new_with(params.pq_bytes.min(dim), dim)
            .map_err(|e| IndexError::Invalid(e.to_string()))?,
    );
    let graph = config::Builder::new_with(
        params.max_degree,
        config::MaxDegree::default_slack(),
        params.build_search_list,
        diskann_metric(params.metric).into(),
        |b| {
            b.saturate_after_prune(true);
        },
    )
    .build()
    .map_err(|e| IndexError::Invalid(e.to_string()))?;
    let index_config = IndexConfiguration::new(
        diskann_metric(params.metric),
        dim,
        n,
        ONE,
        params.threads.max(1),
        graph,
    )
    .with_pseudo_rng_from_seed(42);
    let writer = DiskIndexWriter::new(path_str(&data_path)?, prefix, None, BLOCK_SIZE)?;
    let mut builder = DiskIndexBuilder::<AdHoc<f32>, _>::new(
        &FileStorageProvider,
        build_params,
        index_config,
        writer,
    )?;
    builder.build()?;
    // The disk index holds the full vectors; the input copy is not needed.
    std::fs::remove_file(&data_path).map_err(io("remove build input"))?;
    Ok(())
}

type Searcher =
    DiskIndexSearcher<AdHoc<f32>, DiskVertexProviderFactory<AdHoc<f32>, PreadReaderFactory>>;

/// An opened disk index: PQ codes in memory, graph and vectors on disk.
pub struct DiskAnnSearcher {
    /// Always `Some` until dropped (see the `Drop` impl).
    searcher: Option<Searcher>,
    metric: IndexMetric,
    dir: PathBuf,
}

impl std::fmt::Debug for DiskAnnSearcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskAnnSearcher")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Drop for DiskAnnSearcher {
    fn drop(&mut self) {
        // The searcher owns a tokio runtime, which must not be dropped on an
        // async worker thread (tokio panics); the last owner may well be one.
        if let Some(searcher) = self.searcher.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(searcher));
            } else {
                drop(searcher);
            }
        }
    }
}

impl DiskAnnSearcher {
    /// Opens the index built into `dir`. Blocking.
    pub fn open(dir: &Path, metric: IndexMetric, threads: usize) -> Result<Self, IndexError> {
        let prefix = path_str(&dir.join(PREFIX))?;
        let reader = DiskIndexReader::new(
            format!("{prefix}_pq_pivots.bin"),
            format!("{prefix}_pq_compressed.bin"),
            &FileStorageProvider,
        )?;
        let factory = DiskVertexProviderFactory::<AdHoc<f32>, _>::new(
            PreadReaderFactory {
                path: format!("{prefix}_disk.index"),
            },
            CachingStrategy::None,
        )?;
        let searcher = DiskIndexSearcher::new(
            threads.max(1),
            u32::MAX as usize,
            &reader,
            factory,
            diskann_metric(metric),
            None,
        )?;
        Ok(DiskAnnSearcher {
            searcher: Some(searcher),
            metric,
            dir: dir.to_path_buf(),
        })
    }

    /// The `k` nearest row ids to `query` (nearest first), exploring a
    /// candidate list of `search_list` (raised to k). With `allowed`, only
    /// rows it accepts are returned, filtered during graph traversal (so the
    /// list fills with matching rows). Each hit carries its full-precision
    /// distance as [`crate::exact::ordering_distance`] defines it, so hits
    /// rank alike with exact search results. Blocking.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        search_list: usize,
        allowed: Option<&(dyn Fn(u32) -> bool + Send + Sync)>,
    ) -> Result<Vec<(u32, f32)>, IndexError> {
        let mut unit;
        let query = if self.metric == IndexMetric::Cosine {
            unit = query.to_vec();
            normalize(&mut unit);
            &unit[..]
        } else {
            query
        };
        let mode = match allowed {
            None => SearchMode::graph(),
            Some(f) => SearchMode::inline_filter(move |id: &u32| f(*id), None),
        };
        let searcher = self
            .searcher
            .as_ref()
            .ok_or_else(|| IndexError::Invalid("searcher already closed".into()))?;
        let result = searcher.search(query, k as u32, search_list.max(k) as u32, Some(4), mode)?;
        let valid = result.stats.result_count as usize;
        // DiskANN reranks its hits with the full vectors from the index
        // file. A cosine index holds unit vectors and searches them by
        // squared L2, which is 2 · (1 − cos); inner product comes negated,
        // as pgvector's `<#>` is.
        let to_ordering = match self.metric {
            IndexMetric::Cosine => |d: f32| d / 2.0,
            IndexMetric::L2 | IndexMetric::InnerProduct => |d: f32| d,
        };
        Ok(result
            .results
            .into_iter()
            .take(valid)
            .map(|r| (r.vertex_id, to_ordering(r.distance)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Clustered data shaped like real embeddings: 50 random centres, and
    /// around each a spread along 48 latent directions plus small isotropic
    /// noise (low intrinsic dimension; uniform noise in all 64 dimensions
    /// would be the adversarial worst case for any graph index).
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        const LATENT: usize = 48;
        let mut setup = StdRng::seed_from_u64(1);
        let centres: Vec<Vec<f32>> = (0..50)
            .map(|_| (0..dim).map(|_| setup.random_range(-10.0..10.0)).collect())
            .collect();
        let basis: Vec<Vec<f32>> = (0..LATENT)
            .map(|_| (0..dim).map(|_| setup.random_range(-1.0..1.0)).collect())
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let c = &centres[rng.random_range(0..centres.len())];
            let z: Vec<f32> = (0..LATENT)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect();
            for d in 0..dim {
                let latent: f32 = (0..LATENT).map(|j| z[j] * basis[j][d]).sum();
                out.push(c[d] + latent + rng.random_range(-0.5f32..0.5));
            }
        }
        out
    }

    fn exact_top_k(data: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<u32> {
        exact_filtered(data, dim, q, k, IndexMetric::L2, &|_| true)
    }

    fn exact_filtered(
        data: &[f32],
        dim: usize,
        q: &[f32],
        k: usize,
        metric: IndexMetric,
        allowed: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let mut d: Vec<(f32, u32)> = data
            .chunks_exact(dim)
            .enumerate()
            .filter(|(i, _)| allowed(*i as u32))
            .map(|(i, v)| (crate::exact::ordering_distance(metric, v, q), i as u32))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        d.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn recall(
        searcher: &DiskAnnSearcher,
        data: &[f32],
        queries: &[f32],
        dim: usize,
        metric: IndexMetric,
        l: usize,
        allowed: Option<&(dyn Fn(u32) -> bool + Send + Sync)>,
    ) -> f64 {
        let (mut hits, mut total) = (0, 0);
        for q in queries.chunks_exact(dim) {
            let truth = exact_filtered(data, dim, q, 10, metric, &|i| allowed.is_none_or(|f| f(i)));
            let got = searcher.search(q, 10, l, allowed).unwrap();
            assert!(allowed.is_none_or(|f| got.iter().all(|(id, _)| f(*id))));
            hits += got.iter().filter(|(id, _)| truth.contains(id)).count();
            total += truth.len();
        }
        hits as f64 / total as f64
    }

    #[test]
    fn disk_index_recall_against_exact_search() {
        let (n, dim, k) = (20_000, 64, 10);
        let data = clustered(n, dim, 7);
        let dir = tempfile::tempdir().unwrap();
        let params = DiskAnnParams::new(IndexMetric::L2, dim);
        build_disk_index(&data, dim, &params, dir.path()).unwrap();
        for f in index_files() {
            assert!(dir.path().join(&f).exists(), "{f} missing");
        }
        let searcher = DiskAnnSearcher::open(dir.path(), IndexMetric::L2, 1).unwrap();
        let queries = clustered(100, dim, 8);
        let recall_at = |l: usize| {
            let mut hits = 0;
            for q in queries.chunks_exact(dim) {
                let truth = exact_top_k(&data, dim, q, k);
                let got: Vec<u32> = searcher
                    .search(q, k, l, None)
                    .unwrap()
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                hits += got.iter().filter(|id| truth.contains(id)).count();
            }
            hits as f64 / (queries.len() / dim * k) as f64
        };
        let low = recall_at(10);
        let high = recall_at(100);
        eprintln!(
            "recall@10: L=10 {low:.3}, L=50 {:.3}, L=100 {high:.3}, L=200 {:.3}",
            recall_at(50),
            recall_at(200)
        );
        assert!(high >= 0.95, "recall@10 at L=100 is {high}");
        assert!(
            high >= low,
            "recall must not drop with a larger list ({low} -> {high})"
        );
        let half = |id: u32| id.is_multiple_of(2);
        let filtered = recall(
            &searcher,
            &data,
            &queries,
            dim,
            IndexMetric::L2,
            100,
            Some(&half),
        );
        eprintln!("filtered (50%) recall@10 at L=100: {filtered:.3}");
        assert!(filtered >= 0.95, "filtered recall {filtered}");
    }

    #[test]
    fn cosine_and_inner_product_indexes() {
        let (n, dim) = (5_000, 32);
        let data = clustered(n, dim, 11);
        let queries = clustered(50, dim, 12);
        for metric in [IndexMetric::Cosine, IndexMetric::InnerProduct] {
            let dir = tempfile::tempdir().unwrap();
            let params = DiskAnnParams::new(metric, dim);
            build_disk_index(&data, dim, &params, dir.path()).unwrap();
            let searcher = DiskAnnSearcher::open(dir.path(), metric, 1).unwrap();
            let r = recall(&searcher, &data, &queries, dim, metric, 100, None);
            eprintln!("{metric:?} recall@10 at L=100: {r:.3}");
            assert!(r >= 0.9, "{metric:?} recall {r}");
        }
    }

    /// Hits carry the same distances exact search computes, for every
    /// metric, so the two kinds of result can be merged by distance.
    #[test]
    fn hit_distances_are_ordering_distances() {
        let (n, dim) = (2_000, 16);
        let data = clustered(n, dim, 21);
        let queries = clustered(20, dim, 22);
        for metric in [
            IndexMetric::L2,
            IndexMetric::Cosine,
            IndexMetric::InnerProduct,
        ] {
            let dir = tempfile::tempdir().unwrap();
            build_disk_index(&data, dim, &DiskAnnParams::new(metric, dim), dir.path()).unwrap();
            let searcher = DiskAnnSearcher::open(dir.path(), metric, 1).unwrap();
            for q in queries.chunks(dim) {
                let hits = searcher.search(q, 10, 40, None).unwrap();
                assert_eq!(hits.len(), 10);
                for (id, got) in hits {
                    let row = &data[id as usize * dim..(id as usize + 1) * dim];
                    let want = crate::exact::ordering_distance(metric, q, row);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{metric:?}: row {id} distance {got}, exact {want}"
                    );
                }
            }
        }
    }
}

//! The local object store, made durable.
//!
//! `object_store`'s `LocalFileSystem` writes a staging file and renames it
//! into place without fsync, so a power failure can lose an object whose
//! write returned. Sealed segments, delete logs and index files are the
//! only copy of their rows once the WAL is truncated (and bulk loads never
//! reach the WAL), so every completed write here syncs the file and the
//! directories above it, up to the store's root, before it returns. Written by hand because the crate offers no
//! such option; everything else delegates to `LocalFileSystem`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

#[derive(Debug)]
pub struct DurableLocalStore {
    inner: Arc<LocalFileSystem>,
    /// The store's directory: directories are synced up to it.
    root: PathBuf,
}

impl DurableLocalStore {
    /// `inner` must have been made with `root` as its prefix.
    pub fn new(inner: LocalFileSystem, root: PathBuf) -> Self {
        DurableLocalStore {
            inner: Arc::new(inner),
            root,
        }
    }

    /// Syncs a written file and every directory from its own up to the
    /// store's root: a write may have created several of them (a new
    /// segment's directory, a new table's), and a directory's entry is
    /// only durable once its parent is synced.
    async fn sync(&self, file: PathBuf) -> Result<()> {
        let root = self.root.clone();
        sync_file(file, root).await
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

async fn sync_file(file: PathBuf, root: PathBuf) -> Result<()> {
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)?.sync_all()?;
            if !d.starts_with(&root) || d == root {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await;
    let error = match synced {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
        Err(e) => Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
    };
    Err(object_store::Error::Generic {
        store: "LocalFileSystem",
        source: error,
    })
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.sync(self.inner.path_to_filesystem(location)?).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            upload,
            file: self.inner.path_to_filesystem(location)?,
            root: self.root.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(self.inner.path_to_filesystem(to)?).await
    }
}

/// A multipart upload whose completion syncs the assembled file.
#[derive(Debug)]
struct DurableUpload {
    upload: Box<dyn MultipartUpload>,
    file: PathBuf,
    root: PathBuf,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.upload.complete().await?;
        sync_file(self.file.clone(), self.root.clone()).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, WriteMultipart};

    #[tokio::test]
    async fn writes_read_back_through_every_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(
            LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
            dir.path().to_path_buf(),
        );
        let one = Path::from("a/one");
        store
            .put(&one, PutPayload::from_static(b"one"))
            .await
            .unwrap();
        let mut upload =
            WriteMultipart::new(store.put_multipart(&Path::from("b/two")).await.unwrap());
        upload.write(b"tw");
        upload.write(b"o");
        upload.finish().await.unwrap();
        store.copy(&one, &Path::from("c/three")).await.unwrap();
        for (path, want) in [("a/one", "one"), ("b/two", "two"), ("c/three", "one")] {
            let got = store
                .get(&Path::from(path))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(got.as_ref(), want.as_bytes(), "{path}");
            assert!(dir.path().join(path).is_file());
        }
    }
}

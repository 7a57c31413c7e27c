//! [`DurableLocalStore`]: a local-directory bucket whose writes are on disk when they return.
//!
//! `object_store`'s `LocalFileSystem` (as Shale configures it) publishes each object by
//! renaming or hard-linking a staged file into place but leaves both the data and the new
//! directory entry in the page cache. The WAL acknowledges appends once the object's PUT
//! returned and the catalog commit went through, so with a plain `LocalFileSystem` a power cut
//! can lose acknowledged data even though the catalog (fsynced by Raft) still references it.
//! This wrapper fsyncs, after every successful PUT, completed multipart upload, copy and
//! rename: the file, its parent directory, and every ancestor directory up to the store root
//! that was not yet known to be durable (so newly created directories are reachable after a
//! crash too). The syncs run on the blocking pool.
//!
//! Deletes are not synced: a deleted object that reappears after a crash is unreferenced and
//! removed by the garbage collector.

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// How files and directories are flushed to stable storage. The real implementation is
/// [`OsSync`]; tests substitute a recorder to simulate power loss.
pub trait Syncer: Send + Sync + fmt::Debug + 'static {
    /// Flushes a file's data and metadata (`fsync`).
    fn sync_file(&self, path: &std::path::Path) -> io::Result<()>;
    /// Flushes a directory, making the entries it holds durable.
    fn sync_dir(&self, path: &std::path::Path) -> io::Result<()>;
}

/// `fsync(2)` through `File::sync_all`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSync;

impl Syncer for OsSync {
    fn sync_file(&self, path: &std::path::Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
    fn sync_dir(&self, path: &std::path::Path) -> io::Result<()> {
        // Opening a directory read-only and fsyncing it is how POSIX persists its entries.
        std::fs::File::open(path)?.sync_all()
    }
}

struct SyncState {
    root: PathBuf,
    syncer: Arc<dyn Syncer>,
    /// Directories whose own entry (in their parent) is known durable.
    durable_dirs: Mutex<HashSet<PathBuf>>,
}

impl SyncState {
    /// Makes `file` and the directory chain leading to it durable.
    fn sync_path(&self, file: &std::path::Path) -> io::Result<()> {
        self.syncer.sync_file(file)?;
        // Directories whose own entry becomes durable with the next directory sync.
        let mut pending = Vec::new();
        let mut dir = file.parent();
        while let Some(d) = dir {
            // Persists the entry of what was handled last (the file, or `pending`'s last).
            self.syncer.sync_dir(d)?;
            if d == self.root || !d.starts_with(&self.root) || self.durable_dirs.lock().contains(d)
            {
                break;
            }
            // `d` may be new: its entry lives in its parent, synced in the next round. It is
            // remembered as durable only afterwards, so a concurrent writer never skips a
            // sync that has not happened yet.
            pending.push(d.to_path_buf());
            dir = d.parent();
        }
        self.durable_dirs.lock().extend(pending);
        Ok(())
    }
}

/// A local-directory [`ObjectStore`] that fsyncs what it writes (see the module docs).
pub struct DurableLocalStore {
    inner: LocalFileSystem,
    sync: Arc<SyncState>,
}

impl fmt::Debug for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.sync.root.display())
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.sync.root.display())
    }
}

fn sync_error(e: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DurableLocalStore",
        source: Box::new(e),
    }
}

impl DurableLocalStore {
    /// A store rooted at `root` (which must exist), syncing with `fsync`. Empty directories
    /// left by deletes are removed.
    pub fn new(root: impl AsRef<std::path::Path>) -> object_store::Result<Self> {
        Self::with_syncer(root, Arc::new(OsSync))
    }

    /// A store rooted at `root` flushing through `syncer` (tests).
    pub fn with_syncer(
        root: impl AsRef<std::path::Path>,
        syncer: Arc<dyn Syncer>,
    ) -> object_store::Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root.as_ref())?.with_automatic_cleanup(true);
        let root = std::fs::canonicalize(root.as_ref()).map_err(sync_error)?;
        // The root's own entry: it may have been created just before the store.
        if let Some(parent) = root.parent() {
            syncer.sync_dir(parent).map_err(sync_error)?;
        }
        Ok(DurableLocalStore {
            inner,
            sync: Arc::new(SyncState {
                root,
                syncer,
                durable_dirs: Mutex::new(HashSet::new()),
            }),
        })
    }

    async fn sync(&self, location: &Path) -> object_store::Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        sync_blocking(self.sync.clone(), file).await
    }
}

async fn sync_blocking(sync: Arc<SyncState>, file: PathBuf) -> object_store::Result<()> {
    match tokio::task::spawn_blocking(move || sync.sync_path(&file)).await {
        Ok(r) => r.map_err(sync_error),
        Err(e) => Err(object_store::Error::JoinError { source: e }),
    }
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create = matches!(opts.mode, PutMode::Create);
        match self.inner.put_opts(location, payload, opts).await {
            Ok(r) => {
                self.sync(location).await?;
                Ok(r)
            }
            Err(e @ object_store::Error::AlreadyExists { .. }) if create => {
                // The caller may read this as "my earlier attempt landed": that attempt may
                // have failed in its fsync, so make the existing object durable before saying so.
                self.sync(location).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner: upload,
            file: self.inner.path_to_filesystem(location)?,
            sync: self.sync.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await?;
        // The source's removal is part of the rename: persist it so the object does not show
        // up under both names after a crash.
        let src = self.inner.path_to_filesystem(from)?;
        let sync = self.sync.clone();
        match src.parent().map(|p| p.to_path_buf()) {
            Some(dir) if dir.exists() => {
                match tokio::task::spawn_blocking(move || sync.syncer.sync_dir(&dir)).await {
                    Ok(r) => r.map_err(sync_error),
                    Err(e) => Err(object_store::Error::JoinError { source: e }),
                }
            }
            _ => Ok(()),
        }
    }
}

/// A multipart upload whose completion is synced like a PUT.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
    sync: Arc<SyncState>,
}

impl fmt::Debug for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncState({})", self.root.display())
    }
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let r = self.inner.complete().await?;
        sync_blocking(self.sync.clone(), self.file.clone()).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, WriteMultipart};

    /// Records which paths were synced, relative to the root.
    #[derive(Debug, Default)]
    struct Log {
        root: Mutex<PathBuf>,
        files: Mutex<Vec<String>>,
        dirs: Mutex<Vec<String>>,
    }

    impl Log {
        fn rel(&self, p: &std::path::Path) -> String {
            let root = self.root.lock().clone();
            match p.strip_prefix(&root) {
                Ok(r) => format!("/{}", r.display()),
                Err(_) => "(outside)".into(),
            }
        }
    }

    impl Syncer for Log {
        fn sync_file(&self, p: &std::path::Path) -> io::Result<()> {
            let r = self.rel(p);
            self.files.lock().push(r);
            Ok(())
        }
        fn sync_dir(&self, p: &std::path::Path) -> io::Result<()> {
            let r = self.rel(p);
            self.dirs.lock().push(r);
            Ok(())
        }
    }

    fn store() -> (tempfile::TempDir, Arc<Log>, DurableLocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::default());
        *log.root.lock() = std::fs::canonicalize(dir.path()).unwrap();
        let s = DurableLocalStore::with_syncer(dir.path(), log.clone()).unwrap();
        log.dirs.lock().clear();
        (dir, log, s)
    }

    #[tokio::test]
    async fn a_put_syncs_the_file_and_every_new_directory_up_to_the_root() {
        let (_d, log, s) = store();
        s.put(&Path::from("a/b/x"), "1".into()).await.unwrap();
        assert_eq!(*log.files.lock(), vec!["/a/b/x"]);
        // x's entry in b, b's in a, a's in the root.
        assert_eq!(*log.dirs.lock(), vec!["/a/b", "/a", "/"]);
    }

    #[tokio::test]
    async fn a_put_into_a_known_directory_syncs_only_its_parent() {
        let (_d, log, s) = store();
        s.put(&Path::from("a/b/x"), "1".into()).await.unwrap();
        log.dirs.lock().clear();
        s.put(&Path::from("a/b/y"), "2".into()).await.unwrap();
        assert_eq!(*log.dirs.lock(), vec!["/a/b"]);
    }

    #[tokio::test]
    async fn a_completed_multipart_upload_is_synced() {
        let (_d, log, s) = store();
        let upload = s.put_multipart(&Path::from("m/obj")).await.unwrap();
        let mut w = WriteMultipart::new(upload);
        w.write(b"part");
        w.finish().await.unwrap();
        assert_eq!(*log.files.lock(), vec!["/m/obj"]);
    }

    #[tokio::test]
    async fn a_rename_syncs_the_destination_and_the_source_directory() {
        let (_d, log, s) = store();
        s.put(&Path::from("a/x"), "1".into()).await.unwrap();
        s.put(&Path::from("b/keep"), "1".into()).await.unwrap();
        log.files.lock().clear();
        log.dirs.lock().clear();
        s.rename(&Path::from("a/x"), &Path::from("b/x"))
            .await
            .unwrap();
        assert_eq!(*log.files.lock(), vec!["/b/x"]);
        assert!(log.dirs.lock().contains(&"/b".to_string()));
    }

    #[tokio::test]
    async fn an_exclusive_put_onto_an_existing_object_syncs_it_and_reports_already_exists() {
        let (_d, log, s) = store();
        s.put(&Path::from("x"), "1".into()).await.unwrap();
        log.files.lock().clear();
        let r = s
            .put_opts(&Path::from("x"), "2".into(), PutMode::Create.into())
            .await;
        assert!(matches!(r, Err(object_store::Error::AlreadyExists { .. })));
        assert_eq!(*log.files.lock(), vec!["/x"]);
    }
}

//! Attachments: small blobs a stream's owner keeps beside the stream in the bucket (the
//! broker's producer-state snapshot), one per name, replaced on every write. They are not
//! in the catalog: the key names the stream, and the garbage collector deletes those of
//! streams the catalog no longer has.
//!
//! Node blobs are their per-node counterpart (the broker's producer-state checkpoint of
//! every partition a node has open): one object per node and name, so a node writes one
//! PUT for all its streams. Not in the catalog either; the garbage collector deletes one
//! that has not been rewritten for `gc_min_age`, like any unreferenced object (a writer
//! that keeps it must rewrite it more often than that).

use crate::util::Backoff;
use crate::{Inner, Stream, StreamError, StreamId, StreamStore};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;

/// Folder of attachments under the cluster's prefix.
pub(crate) const DIR: &str = "attach/";

/// Folder of node blobs under the cluster's prefix.
const NODE_DIR: &str = "nodes/";

fn node_key(prefix: &str, node: u64, name: &str) -> String {
    format!("{prefix}{NODE_DIR}{node}/{name}")
}

pub(crate) fn key(prefix: &str, stream: StreamId, name: &str) -> String {
    format!("{prefix}{DIR}{stream:020}/{name}")
}

/// The stream an attachment key belongs to (`None` for any other key).
pub(crate) fn stream_of(prefix: &str, key: &str) -> Option<StreamId> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(DIR)?;
    rest.split('/').next()?.parse().ok()
}

impl Stream {
    /// Stores `data` as the stream's attachment `name`, replacing the previous one. Retries
    /// like any upload; a name is a plain word (no `/`).
    pub async fn put_attachment(&self, name: &str, data: Bytes) -> Result<(), StreamError> {
        let path = Path::from(key(&self.inner.config.object_prefix(), self.id(), name));
        put(&self.inner, &path, data).await
    }

    /// The stream's attachment `name`, `None` when there is none.
    pub async fn get_attachment(&self, name: &str) -> Result<Option<Bytes>, StreamError> {
        let path = Path::from(key(&self.inner.config.object_prefix(), self.id(), name));
        get(&self.inner, &path).await
    }
}

impl StreamStore {
    /// Stores `data` as this node's blob `name`, replacing the previous one (see the module
    /// doc). Retries like any upload.
    pub async fn put_node_blob(&self, name: &str, data: Bytes) -> Result<(), StreamError> {
        let inner = &self.inner;
        let path = Path::from(node_key(
            &inner.config.object_prefix(),
            inner.config.node_id,
            name,
        ));
        put(inner, &path, data).await
    }

    /// Node `node`'s blob `name`, `None` when there is none.
    pub async fn get_node_blob(&self, node: u64, name: &str) -> Result<Option<Bytes>, StreamError> {
        let path = Path::from(node_key(&self.inner.config.object_prefix(), node, name));
        get(&self.inner, &path).await
    }
}

async fn put(inner: &Inner, path: &Path, data: Bytes) -> Result<(), StreamError> {
    let mut backoff = Backoff::new(&inner.tuning, inner.config.wal_retry_timeout);
    loop {
        match inner.store.put(path, data.clone().into()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(key = %path, error = %e, "blob upload failed; retrying");
                if !backoff.wait().await {
                    return Err(StreamError::ObjectStore(format!("PUT {path}: {e}")));
                }
            }
        }
    }
}

async fn get(inner: &Inner, path: &Path) -> Result<Option<Bytes>, StreamError> {
    let got = async { inner.store.get(path).await?.bytes().await }.await;
    match got {
        Ok(b) => Ok(Some(b)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(StreamError::ObjectStore(format!("GET {path}: {e}"))),
    }
}

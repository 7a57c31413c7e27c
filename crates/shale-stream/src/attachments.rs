//! Attachments: small blobs a stream's owner keeps beside the stream in the bucket (the
//! broker's producer-state snapshot), one per name, replaced on every write. They are not
//! in the catalog: the key names the stream, and the garbage collector deletes those of
//! streams the catalog no longer has.

use crate::util::Backoff;
use crate::{Stream, StreamError, StreamId};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;

/// Folder of attachments under the cluster's prefix.
pub(crate) const DIR: &str = "attach/";

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
        let mut backoff = Backoff::new(&self.inner.tuning, self.inner.config.wal_retry_timeout);
        loop {
            match self.inner.store.put(&path, data.clone().into()).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(key = %path, error = %e, "attachment upload failed; retrying");
                    if !backoff.wait().await {
                        return Err(StreamError::ObjectStore(format!("PUT {path}: {e}")));
                    }
                }
            }
        }
    }

    /// The stream's attachment `name`, `None` when there is none.
    pub async fn get_attachment(&self, name: &str) -> Result<Option<Bytes>, StreamError> {
        let path = Path::from(key(&self.inner.config.object_prefix(), self.id(), name));
        let got = async { self.inner.store.get(&path).await?.bytes().await }.await;
        match got {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StreamError::ObjectStore(format!("GET {path}: {e}"))),
        }
    }
}

//! An [`ObjectStore`] wrapper that counts what the node asks of its object store: requests,
//! errors and latency per operation, bytes written and read. One place for every path (WAL,
//! compaction, GC, reads), recorded through the `metrics` facade; the binary decides where
//! the figures go (the admin HTTP `/metrics`).
//!
//! Read bytes are the bytes a GET returns (its range), counted when the response starts:
//! that is what the store bills and what the network carries.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Counts the requests of `inner` (see the module docs).
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<MeteredStore> {
        Arc::new(MeteredStore { inner })
    }
}

impl fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeteredStore({})", self.inner)
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

/// Records one finished request of kind `op`.
fn observe<T>(op: &'static str, started: Instant, r: &object_store::Result<T>) {
    metrics::counter!("shale_object_requests_total", "op" => op).increment(1);
    metrics::histogram!("shale_object_request_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    // "Not found" and a failed precondition are answers the caller asked for, not errors.
    if let Err(e) = r
        && !matches!(
            e,
            object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
        )
    {
        metrics::counter!("shale_object_errors_total", "op" => op).increment(1);
    }
}

fn count_bytes(direction: &'static str, n: u64) {
    metrics::counter!("shale_object_bytes_total", "direction" => direction).increment(n);
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let started = Instant::now();
        let len = payload.content_length() as u64;
        let r = self.inner.put_opts(location, payload, opts).await;
        observe("put", started, &r);
        if r.is_ok() {
            count_bytes("put", len);
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let started = Instant::now();
        let r = self.inner.put_multipart_opts(location, opts).await;
        observe("put_multipart", started, &r);
        r
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let started = Instant::now();
        let r = self.inner.get_opts(location, options).await;
        observe(op, started, &r);
        if let Ok(g) = &r
            && op == "get"
        {
            count_bytes("get", g.range.end.saturating_sub(g.range.start));
        }
        r
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        let started = Instant::now();
        let r = self.inner.get_ranges(location, ranges).await;
        observe("get", started, &r);
        if let Ok(parts) = &r {
            count_bytes("get", parts.iter().map(|b| b.len() as u64).sum());
        }
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner
            .delete_stream(locations)
            .map(|r| {
                metrics::counter!("shale_object_requests_total", "op" => "delete").increment(1);
                if r.is_err() {
                    metrics::counter!("shale_object_errors_total", "op" => "delete").increment(1);
                }
                r
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        metrics::counter!("shale_object_requests_total", "op" => "list").increment(1);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        metrics::counter!("shale_object_requests_total", "op" => "list").increment(1);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let started = Instant::now();
        let r = self.inner.list_with_delimiter(prefix).await;
        observe("list", started, &r);
        r
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let started = Instant::now();
        let r = self.inner.copy_opts(from, to, options).await;
        observe("copy", started, &r);
        r
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let started = Instant::now();
        let r = self.inner.rename_opts(from, to, options).await;
        observe("rename", started, &r);
        r
    }
}

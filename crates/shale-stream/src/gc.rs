//! The bucket garbage collector: deletes objects under the cluster's prefix that no committed
//! metadata references (neither live nor on the dead list) and that are older than
//! `gc.min.age`. Such orphans come from PUTs whose outcome was ambiguous and whose appends then
//! failed, from compactions that crashed between their PUT and their catalog swap, and from
//! deletes undone by a crash of a local store.
//!
//! Safety rests on two rules. The bucket is listed *before* the catalog is read, so an object
//! committed in between is seen as referenced. And an object younger than the horizon is
//! never touched: a PUT may land long before its commit (WAL retries until its deadline, the
//! local catalog replica may lag the quorum), and the horizon must stay well above those
//! delays. Every node may run it; deletes of the same orphan by two nodes are harmless.

use crate::util::now_ms;
use crate::{Inner, StreamError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use std::collections::HashSet;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// Outcome of one garbage-collection pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Objects listed under the cluster's prefix.
    pub listed: usize,
    /// Listed objects the catalog references (kept).
    pub referenced: usize,
    /// Unreferenced objects younger than the horizon (kept for now).
    pub too_young: usize,
    /// Orphans deleted.
    pub deleted: usize,
    /// Orphans whose delete failed (retried next pass).
    pub failed: usize,
}

pub(crate) async fn collect(inner: &Inner) -> Result<GcReport, StreamError> {
    let mut report = GcReport::default();
    if inner.config.cluster_id.is_empty() {
        // Without a cluster id the prefix may hold other clusters' objects.
        tracing::warn!("garbage collection skipped: no cluster id to scope the bucket listing");
        return Ok(report);
    }
    let prefix = Path::from(inner.config.object_prefix().as_str());
    let listed: Vec<object_store::ObjectMeta> = inner
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| StreamError::ObjectStore(format!("LIST {prefix}: {e}")))?;
    report.listed = listed.len();
    let referenced: HashSet<String> = inner
        .catalog
        .live_objects()
        .into_iter()
        .map(|o| o.key)
        .chain(inner.catalog.dead_objects().into_iter().map(|(o, _)| o.key))
        .collect();
    let min_age = i64::try_from(inner.config.gc_min_age.as_millis()).unwrap_or(i64::MAX);
    let horizon = now_ms().saturating_sub(min_age);
    let mut orphans = Vec::new();
    let prefix = inner.config.object_prefix();
    for m in listed {
        // An attachment lives as long as its stream.
        let attached = crate::attachments::stream_of(&prefix, m.location.as_ref())
            .is_some_and(|id| inner.catalog.stream(id).is_some());
        if attached || referenced.contains(m.location.as_ref()) {
            report.referenced += 1;
        } else if m.last_modified.timestamp_millis() > horizon {
            report.too_young += 1;
        } else {
            orphans.push(m.location);
        }
    }
    let store = &inner.store;
    let results: Vec<bool> = futures::stream::iter(orphans)
        .map(|path| async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(key = %path, "deleted unreferenced object");
                    true
                }
                Err(e) => {
                    tracing::warn!(key = %path, error = %e, "cannot delete unreferenced object");
                    false
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    report.deleted = results.iter().filter(|ok| **ok).count();
    report.failed = results.len() - report.deleted;
    inner
        .orphans_deleted
        .fetch_add(report.deleted as u64, Ordering::Relaxed);
    Ok(report)
}

/// Background collector: one pass every `gc_interval` (zero disables it).
pub(crate) async fn run(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let period = match inner.upgrade() {
        Some(i) => i.config.gc_interval,
        None => return,
    };
    if period.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = crate::wal::stopped(&mut stop) => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match collect(&inner).await {
            Ok(r) if r.deleted + r.failed > 0 => {
                tracing::info!(
                    deleted = r.deleted,
                    failed = r.failed,
                    "garbage collection pass"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
        }
    }
}

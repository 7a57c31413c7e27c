//! The admin HTTP port (`admin.http.listener`): what an operator's scraper and orchestrator
//! ask of a node.
//!
//! - `GET /metrics`: Prometheus text, rendered by `metrics-exporter-prometheus` from what the
//!   crates record through the `metrics` facade. Names and labels only: no record key, value
//!   or topic name ever becomes a label.
//! - `GET /health`: 200 while the process runs (liveness).
//! - `GET /ready`: 200 once the node is registered, not fenced nor in doubt, and every
//!   partition it owns is open; 503 with the reason otherwise (readiness).

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shale_broker::Broker;
use std::sync::Arc;
use std::time::Duration;

/// Latency buckets, seconds: sub-millisecond requests to multi-second stalls.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// WAL object sizes, bytes: 1 KiB to 64 MiB.
const FLUSH_BYTES: &[f64] = &[
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// Installs the process's metrics recorder. Call once, before anything records.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("shale_wal_flush_bytes".into()), FLUSH_BYTES)
        })
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    Ok(handle)
}

/// The `# HELP` lines of the main series.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("shale_requests_total", "Kafka requests answered, by API");
    describe_histogram!(
        "shale_request_seconds",
        Unit::Seconds,
        "Kafka request latency, by API (a fetch's long poll included)"
    );
    describe_histogram!(
        "shale_wal_flush_bytes",
        Unit::Bytes,
        "Size of each WAL object"
    );
    describe_histogram!(
        "shale_wal_flush_seconds",
        Unit::Seconds,
        "WAL flush: buffer taken to appends acknowledged (PUT and metadata commit)"
    );
    describe_histogram!(
        "shale_wal_commit_seconds",
        Unit::Seconds,
        "Metadata commit of a WAL object"
    );
    describe_counter!(
        "shale_wal_flush_failures_total",
        "WAL objects that could not be written"
    );
    describe_counter!(
        "shale_object_requests_total",
        "Object store requests, by operation"
    );
    describe_counter!(
        "shale_object_errors_total",
        "Object store requests that failed, by operation"
    );
    describe_counter!(
        "shale_object_bytes_total",
        Unit::Bytes,
        "Object store bytes written (put) and read (get)"
    );
    describe_histogram!(
        "shale_object_request_seconds",
        Unit::Seconds,
        "Object store request latency, by operation"
    );
    describe_counter!(
        "shale_block_cache_hits_total",
        "Block cache lookups served from memory"
    );
    describe_counter!(
        "shale_block_cache_misses_total",
        "Block cache lookups fetched from the object store"
    );
    describe_counter!(
        "shale_log_cache_reads_total",
        "Reads of recent records, by whether the log cache held them"
    );
    describe_histogram!(
        "shale_metadata_write_seconds",
        Unit::Seconds,
        "Metadata (Raft) write latency: proposal to applied, forwarding included"
    );
    describe_counter!(
        "shale_metadata_write_errors_total",
        "Metadata writes that failed"
    );
    describe_gauge!(
        "shale_metadata_leader_id",
        "Node id of the metadata leader this node knows (-1: none)"
    );
    describe_gauge!(
        "shale_metadata_is_leader",
        "1 while this node leads the metadata quorum"
    );
    describe_gauge!("shale_metadata_term", "Raft term");
    describe_gauge!(
        "shale_metadata_applied_index",
        "Last metadata log index applied here"
    );
    describe_counter!(
        "shale_ownership_changes_total",
        "Partitions this node gained or lost"
    );
    describe_counter!(
        "shale_brokers_fenced_total",
        "Brokers fenced by this node as controller"
    );
    describe_counter!(
        "shale_partitions_moved_total",
        "Partitions moved by this node as controller"
    );
    describe_gauge!(
        "shale_owned_partitions_closed",
        "Partitions this node owns but has not open"
    );
}

/// Serves the admin port until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    broker: Arc<Broker>,
) {
    // The exporter keeps histogram state until upkeep drains it.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = answer(&req, &handle, &broker);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await
            {
                tracing::debug!(error = %e, "admin http connection ended");
            }
        });
    }
}

fn answer<B>(
    req: &Request<B>,
    metrics: &PrometheusHandle,
    broker: &Broker,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            // Refreshed here so a scrape sees the current value, not the last tick's.
            let _ = broker.readiness();
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => match broker.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /health, /ready\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

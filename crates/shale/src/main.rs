//! The `shale` binary: `shale dev` (zero configuration) and `shale serve --config FILE`.

mod admin_http;
mod config;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::Settings;
use object_store::ObjectStore;
use shale_broker::{Broker, BrokerConfig};
use shale_meta::{MetaConfig, MetaNode};
use shale_stream::{StreamConfig, StreamStore};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "shale",
    version,
    about = "Kafka-compatible shared-storage broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One node on 127.0.0.1:9092 with a local-directory object store under ./shale-data.
    Dev {
        /// Where metadata and objects are kept.
        #[arg(long, default_value = "./shale-data")]
        data_dir: PathBuf,
        /// Kafka port on 127.0.0.1.
        #[arg(long, default_value_t = 9092)]
        port: u16,
    },
    /// Runs a node from a configuration file (SHALE_* environment variables override it).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks an audit log (a file, or the __shale_audit topic exported one value per line):
    /// every event's hash, every link to the event before it, every sequence. Exits 1 on the
    /// first problem.
    Verify {
        file: PathBuf,
        /// A head recorded earlier (logged by the node as `audit head`), as
        /// SOURCE=SEQUENCE:HASH: the log must still reach it, so a truncated tail shows.
        #[arg(long = "expect")]
        expect: Vec<String>,
    },
}

/// `shale audit verify`.
fn audit_verify(file: &std::path::Path, expect: &[String]) -> anyhow::Result<bool> {
    use shale_security::audit::{Head, Verifier};
    let mut verifier = Verifier::new();
    for e in expect {
        let (source, head) = e
            .rsplit_once('=')
            .with_context(|| format!("--expect {e}: expected SOURCE=SEQUENCE:HASH"))?;
        let head: Head = head
            .parse()
            .map_err(|err| anyhow::anyhow!("--expect {e}: {err}"))?;
        verifier = verifier.expecting(source, head);
    }
    let report = verifier
        .verify_file(file)
        .with_context(|| format!("reading {}", file.display()))?;
    println!("{report}");
    Ok(report.is_ok())
}

/// Log filter when neither `SHALE_LOG` nor `RUST_LOG` is set. openraft logs every election
/// step and a multi-kilobyte dump of its state at INFO on each start; what a user needs from
/// it (failures) is at WARN and above.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

fn log_filter() -> tracing_subscriber::EnvFilter {
    ["SHALE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER))
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        // Colour codes only help a terminal; in a file or a journal they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config_path = None;
    let settings = match cli.command {
        Command::Dev { data_dir, port } => {
            let mut s = Settings::load(None)?;
            if !s.is_set("data.dir") {
                s.set("data.dir", data_dir.display().to_string())?;
            }
            if !s.is_set("listeners") {
                s.set("listeners", format!("PLAINTEXT://127.0.0.1:{port}"))?;
            }
            s
        }
        Command::Audit {
            command: AuditCommand::Verify { file, expect },
        } => {
            let ok = audit_verify(&file, &expect)?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Serve { config } => {
            config_path = config;
            Settings::load(config_path.as_deref())?
        }
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings, config_path))
}

/// Where objects go, in words, for the start banner.
fn object_store_location(s: &Settings) -> String {
    match s.str("object.store") {
        "local" => {
            let path = match s.opt("object.store.local.path") {
                Some(p) => PathBuf::from(p),
                None => s.data_dir().join("objects"),
            };
            format!("local directory {}", path.display())
        }
        "s3" => {
            let endpoint = s.opt("s3.endpoint").unwrap_or("AWS");
            format!(
                "s3://{}/{} at {endpoint}",
                s.str("s3.bucket"),
                s.str("s3.prefix")
            )
        }
        other => other.to_string(),
    }
}

/// The start banner on stdout. The `bootstrap: HOST:PORT` line stays first and unchanged:
/// scripts wait for it.
fn banner(s: &Settings, bootstrap: &str, cluster_id: &str) -> String {
    format!(
        "bootstrap: {bootstrap}\n\
         shale {version} serving Kafka on {bootstrap} (cluster {cluster_id})\n\
         data dir:     {data_dir}\n\
         object store: {store}\n\
         stop with Ctrl-C or SIGTERM (the WAL is drained first)",
        version = env!("CARGO_PKG_VERSION"),
        data_dir = s.data_dir().display(),
        store = object_store_location(s),
    )
}

fn object_store(s: &Settings) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match s.str("object.store") {
        "local" => {
            let path = match s.opt("object.store.local.path") {
                Some(p) => PathBuf::from(p),
                None => s.data_dir().join("objects"),
            };
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            // fsyncs every object before the PUT returns: the WAL acknowledges appends
            // after that, so they must survive a power cut.
            Ok(Arc::new(shale_stream::local::DurableLocalStore::new(
                &path,
            )?))
        }
        "s3" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(s.str("s3.bucket"))
                .with_region(s.str("s3.region"))
                .with_retry(object_store::RetryConfig {
                    max_retries: 10,
                    retry_timeout: std::time::Duration::from_secs(120),
                    ..Default::default()
                });
            if let Some(endpoint) = s.opt("s3.endpoint") {
                b = b
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(k) = s.opt("s3.access.key.id") {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = s.opt("s3.secret.access.key") {
                b = b.with_secret_access_key(k);
            }
            if let Some(sse) = s.opt("s3.server.side.encryption") {
                b = b.with_config(
                    "aws_server_side_encryption".parse::<object_store::aws::AmazonS3ConfigKey>()?,
                    sse,
                );
            }
            if let Some(key) = s.opt("s3.sse.kms.key.id") {
                b = b.with_config(
                    "aws_sse_kms_key_id".parse::<object_store::aws::AmazonS3ConfigKey>()?,
                    key,
                );
            }
            Ok(Arc::new(b.build()?))
        }
        other => anyhow::bail!("object.store must be local or s3, not {other}"),
    }
}

async fn run(s: Settings, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Recording starts before anything else does, so start-up is counted too.
    let admin = match s.opt("admin.http.listener") {
        Some(addr) => {
            // Its TLS and token settings are checked here: one that does not load stops
            // start-up before anything is served.
            let get = |key: &str| s.opt(key).map(str::to_string);
            let listener = admin_http::bind(addr, &get).await?;
            Some((listener, admin_http::install_recorder()?))
        }
        None => None,
    };
    let node_id: u64 = s.parse("node.id")?;
    let data_dir = s.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (host, port) = s.listener()?;
    let (adv_host, adv_port) = s.advertised()?;
    // Before anything starts: a listener whose certificate or key does not load stops the
    // node here, with the reason, rather than ever serving plaintext.
    let mut security = s.client_listener_security()?;
    // Likewise an OAUTHBEARER listener whose JWKS cannot be fetched: Kafka's broker does not
    // start without the key set either, and every token would be refused meanwhile.
    security
        .connect_oauth()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let security = Arc::new(security);
    let store: Arc<dyn ObjectStore> = shale_stream::metered::MeteredStore::new(object_store(&s)?);

    // The metadata quorum: this node alone, or the voters of controller.quorum.voters
    // (each one's RPC on its CONTROLLER listener), with every other node a learner.
    let (is_broker, is_controller) = s.roles()?;
    let voters = s.voters()?;
    let (rpc_addr, rpc_listener) = if voters.is_empty() {
        anyhow::ensure!(
            is_broker && is_controller,
            "a node without controller.quorum.voters runs alone and needs \
             process.roles=broker,controller"
        );
        (format!("{host}:{port}"), None)
    } else {
        let controller = s.controller_listener()?;
        let addr = match voters.get(&node_id) {
            Some(addr) => {
                anyhow::ensure!(
                    is_controller,
                    "node.id {node_id} is in controller.quorum.voters: its process.roles \
                     must include controller"
                );
                addr.clone()
            }
            None => {
                anyhow::ensure!(
                    !is_controller,
                    "node.id {node_id} has process.roles=controller but is not in \
                     controller.quorum.voters"
                );
                // A learner receives the metadata log on its controller listener.
                let Some((h, p)) = &controller else {
                    anyhow::bail!(
                        "node.id {node_id} is outside controller.quorum.voters (a learner of \
                         the metadata quorum) and needs a CONTROLLER listener in listeners \
                         to receive the metadata log"
                    );
                };
                format!("{h}:{p}")
            }
        };
        let bind = match controller {
            Some((h, p)) => format!("{h}:{p}"),
            None => addr.clone(),
        };
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("binding the controller listener {bind}"))?;
        (addr, Some(listener))
    };
    let meta = MetaNode::start_with_listener(
        MetaConfig {
            node_id,
            data_dir: data_dir.join("meta"),
            rpc_addr,
            voters,
        },
        shale_meta::MetaOptions {
            session_timeout: s.millis("broker.session.timeout.ms")?,
            tls: s.node_tls(node_id)?,
            ..Default::default()
        },
        rpc_listener,
    )
    .await
    .context("starting the metadata quorum")?;

    let mut prefix = s.str("s3.prefix").to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    // Set by the quorum before `start` returns; objects are keyed under it.
    let cluster_id = meta.read(|s| s.cluster_id.clone());
    anyhow::ensure!(
        !cluster_id.is_empty(),
        "the metadata quorum has no cluster id"
    );
    if !is_broker {
        // A controller only: it serves the metadata quorum (and, leading it, the
        // controller's liveness decisions) and no Kafka clients.
        println!("shale controller {node_id} of cluster {cluster_id}: serving the metadata quorum");
        shutdown_signal().await;
        if let Some((_, handle)) = admin {
            drop(handle);
        }
        meta.shutdown().await;
        return Ok(());
    }
    // Client-side encryption wraps the metered store: the meter counts the bytes that
    // cross the network, ciphertext. It needs the cluster id, bound into every object.
    let (store, encrypted) = match object_keyring(&s)? {
        None => (store, None),
        Some(ring) => {
            tracing::info!(
                kek = ring.current_id(),
                keys = ?ring.ids(),
                "objects are encrypted client-side (AES-256-GCM envelope)"
            );
            let e = shale_stream::encrypted::EncryptedStore::new(
                store,
                cluster_id.as_bytes().to_vec(),
                ring,
                shale_stream::encrypted::DEFAULT_DEK_CACHE_ENTRIES,
            );
            (e.clone() as Arc<dyn ObjectStore>, Some(e))
        }
    };
    let (auditor, topic_sink) = start_audit(&s, &cluster_id, node_id).await?;
    // Always watched: SIGHUP's default action would kill the node without a controlled
    // shutdown.
    tokio::spawn(rotate_keys_on_sighup(
        encrypted,
        config_path.clone(),
        auditor.clone(),
    ));
    let streams = StreamStore::start(
        store,
        meta.catalog(),
        StreamConfig {
            node_id,
            key_prefix: prefix,
            cluster_id,
            wal_batch_interval: s.millis("wal.batch.interval.ms")?,
            wal_batch_bytes: s.parse("wal.batch.bytes")?,
            wal_max_inflight: s.parse("wal.max.inflight.uploads")?,
            log_cache_bytes: s.parse("log.cache.bytes")?,
            block_cache_bytes: s.parse("block.cache.bytes")?,
            readahead_ranges: s.parse("block.readahead.ranges")?,
            compaction_interval: s.millis("compaction.interval.ms")?,
            compaction_small_object_bytes: s.parse("compaction.small.object.bytes")?,
            compaction_max_object_bytes: s.parse("compaction.max.object.bytes")?,
            object_delete_grace: s.millis("object.delete.grace.ms")?,
            wal_max_pending_bytes: s.parse("wal.max.pending.bytes")?,
            wal_retry_timeout: s.millis("wal.retry.timeout.ms")?,
            gc_interval: s.millis("object.gc.interval.ms")?,
            gc_min_age: s.millis("object.gc.min.age.ms")?,
        },
    );

    // Bound before the broker registers: a node that cannot listen must not join the
    // cluster (and be given partitions) first.
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let broker = Broker::start(
        BrokerConfig {
            node_id: i32::try_from(node_id).context("node.id must fit in an int32")?,
            advertised_host: adv_host.clone(),
            advertised_port: adv_port,
            rack: s.opt("broker.rack").map(str::to_string),
            num_partitions: s.parse("num.partitions")?,
            default_replication_factor: s.parse("default.replication.factor")?,
            auto_create_topics: s.parse("auto.create.topics.enable")?,
            socket_request_max_bytes: s.parse("socket.request.max.bytes")?,
            fetch_max_bytes: s.parse("fetch.max.bytes")?,
            retention_check_interval: s.millis("log.retention.check.interval.ms")?,
            topic_defaults: {
                // Objects are deleted `object.delete.grace.ms` after they stop being
                // referenced: that is the node's `file.delete.delay.ms` (Kafka's
                // `log.segment.delete.delay.ms`), which topics may lower but not raise.
                let mut d = s.topic_defaults();
                d.entry("file.delete.delay.ms".into())
                    .or_insert_with(|| s.str("object.delete.grace.ms").trim().to_string());
                d
            },
            offsets_topic_num_partitions: s.parse("offsets.topic.num.partitions")?,
            group_initial_rebalance_delay: s.millis("group.initial.rebalance.delay.ms")?,
            group_min_session_timeout_ms: s.parse("group.min.session.timeout.ms")?,
            group_max_session_timeout_ms: s.parse("group.max.session.timeout.ms")?,
            offset_metadata_max_bytes: s.parse("offset.metadata.max.bytes")?,
            offsets_retention_minutes: s.parse("offsets.retention.minutes")?,
            offsets_retention_check_interval: s.millis("offsets.retention.check.interval.ms")?,
            log_cleaner_backoff: s.millis("log.cleaner.backoff.ms")?,
            producer_id_expiration_ms: s.parse("producer.id.expiration.ms")?,
            producer_id_expiration_check_interval: s
                .millis("producer.id.expiration.check.interval.ms")?,
            producer_state_snapshot_interval: s.millis("producer.state.snapshot.interval.ms")?,
            producer_state_checkpoint_interval: s
                .millis("producer.state.checkpoint.interval.ms")?,
            transaction_max_timeout_ms: s.parse("transaction.max.timeout.ms")?,
            transactional_id_expiration_ms: s.parse("transactional.id.expiration.ms")?,
            transaction_timeout_check_interval: s
                .millis("transaction.abort.timed.out.transaction.cleanup.interval.ms")?,
            transaction_state_num_partitions: s.parse("transaction.state.log.num.partitions")?,
            broker_heartbeat_interval: s.millis("broker.heartbeat.interval.ms")?,
            broker_session_timeout: s.millis("broker.session.timeout.ms")?,
            authorizer: s.authorizer()?,
            auditor: auditor.clone(),
            quota: quota_config(&s)?,
        },
        meta,
        streams,
    )
    .await?;
    if let Some(sink) = topic_sink {
        sink.attach(&broker).await?;
    }
    if auditor.is_enabled() {
        tokio::spawn(log_audit_head(auditor.clone()));
    }

    tracing::debug!(%host, port, data_dir = %data_dir.display(), "shale is serving");
    let cluster = broker.meta.read(|st| st.cluster_id.clone());
    println!(
        "{}",
        banner(&s, &format!("{adv_host}:{adv_port}"), &cluster)
    );

    if let Some((listener, handle)) = admin {
        tokio::spawn(admin_http::serve(listener, handle, broker.clone()));
    }
    let serving = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.serve_listener(listener, security).await })
    };
    shutdown_signal().await;
    // The last events go out while the broker (the topic sink's path) still runs.
    if tokio::time::timeout(std::time::Duration::from_secs(5), auditor.flush())
        .await
        .is_err_and(|_| auditor.is_enabled())
    {
        tracing::warn!("audit log not flushed within 5 s of shutdown");
    }
    tracing::info!("shutting down: draining the WAL");
    broker.shutdown().await;
    let _ = serving.await;
    tracing::info!("stopped");
    Ok(())
}

/// The audit log the settings configure: its file sink (which also carries the chain across
/// restarts) and, unless `audit.topic.enable=false`, the `__shale_audit` topic sink, to be
/// attached once the broker runs.
async fn start_audit(
    s: &Settings,
    cluster_id: &str,
    node_id: u64,
) -> anyhow::Result<(
    shale_security::audit::Auditor,
    Option<shale_broker::audit::TopicSink>,
)> {
    use shale_security::audit::{AuditConfig, AuditSink, Auditor, Chain, FileSink, Source};
    // The file sink is always on (it carries the chain across restarts): its default path
    // stands in for an unset audit.file.path.
    let default_path = s.data_dir().join("audit").join("audit.log");
    let mut config = AuditConfig::from_settings(|k| match (k, s.opt(k)) {
        ("audit.file.path", None) => Some(default_path.display().to_string()),
        (_, v) => v.map(str::to_string),
    })
    .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
    if !config.enabled {
        return Ok((Auditor::disabled(), None));
    }
    let path = config.file_path.get_or_insert(default_path).clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let source = Source::node(cluster_id, i32::try_from(node_id).unwrap_or(i32::MAX));
    let chain = Chain::resume_from_file(&path, &source)
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", path.display()))?;
    let mut sinks: Vec<Box<dyn AuditSink>> =
        vec![Box::new(FileSink::open(&path).await.with_context(
            || format!("opening the audit log {}", path.display()),
        )?)];
    let topic = config
        .topic_enabled
        .then(shale_broker::audit::TopicSink::new);
    if let Some(t) = &topic {
        sinks.push(Box::new(t.clone()));
    }
    tracing::info!(file = %path.display(), topic = topic.is_some(), source = %source, "audit log on");
    Ok((Auditor::start(&config, chain, sinks), topic))
}

/// `quota.window.num` and `quota.window.size.seconds`, checked as Kafka checks them (at
/// least 1 each), and bounded: every client rate keeps one sample per window.
fn quota_config(s: &Settings) -> anyhow::Result<shale_security::quota::QuotaConfig> {
    let samples: u32 = s.parse("quota.window.num")?;
    let seconds: u64 = s.parse("quota.window.size.seconds")?;
    let max_sensors: usize = s.parse("quota.sensors.max")?;
    anyhow::ensure!(
        (1..=1000).contains(&samples),
        "quota.window.num must be between 1 and 1000"
    );
    anyhow::ensure!(
        (1..=3600).contains(&seconds),
        "quota.window.size.seconds must be between 1 and 3600"
    );
    anyhow::ensure!(max_sensors >= 1, "quota.sensors.max must be at least 1");
    Ok(shale_security::quota::QuotaConfig {
        samples,
        window_ms: seconds * 1000,
        max_sensors,
    })
}

/// Logs the audit chain's head every minute: recorded elsewhere (a log collector), it lets
/// `shale audit verify --expect` show a truncated tail.
async fn log_audit_head(auditor: shale_security::audit::Auditor) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Some((source, head)) = auditor.head() {
            tracing::info!(%source, %head, "audit head");
        }
    }
}

/// The object-encryption keyring the settings configure, if any.
fn object_keyring(s: &Settings) -> anyhow::Result<Option<shale_stream::encrypted::Keyring>> {
    shale_stream::encrypted::Keyring::from_settings(|k| s.opt(k).map(str::to_string))
        .map_err(|e| anyhow::anyhow!("object encryption: {e}"))
}

/// Online KEK rotation: on SIGHUP the configuration is read again and its keyring replaces
/// the running one (new objects wrap with the new current key; every key still listed keeps
/// unwrapping). A keyring that fails to load, or none, leaves the running one in place.
async fn rotate_keys_on_sighup(
    store: Option<Arc<shale_stream::encrypted::EncryptedStore>>,
    config: Option<PathBuf>,
    auditor: shale_security::audit::Auditor,
) {
    use shale_security::audit::{AuditEvent, Outcome};
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: KEK rotation needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(store) = &store else {
            tracing::info!(
                "SIGHUP: nothing to reload (objects are not encrypted; enabling encryption \
                 needs a restart)"
            );
            continue;
        };
        let ring = Settings::load(config.as_deref()).and_then(|s| object_keyring(&s));
        match ring {
            Ok(Some(ring)) => {
                let current = ring.current_id().to_string();
                let previous = store.current_key_id();
                store.set_keyring(ring);
                let _ = auditor.record(AuditEvent::key_rotation(
                    current,
                    Some(previous),
                    None,
                    Outcome::Succeeded,
                ));
            }
            Ok(None) => tracing::warn!(
                "SIGHUP: the configuration no longer sets object.encryption.keys; keeping \
                 the running keyring (objects stay encrypted)"
            ),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: keyring not reloaded");
                let _ = auditor.record(
                    AuditEvent::key_rotation(store.current_key_id(), None, None, Outcome::Failed)
                        .with_reason(e.to_string()),
                );
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

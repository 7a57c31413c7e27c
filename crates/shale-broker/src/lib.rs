//! Shale's Kafka front end: connections, request dispatch and the API handlers (one API
//! family per module under `handlers`), on top of the stream layer and the metadata quorum.

pub mod audit;
mod authz;
mod compaction;
pub mod config;
mod connection;
mod dispatch;
mod groups;
pub mod handlers;
mod internal_topics;
mod membership;
mod partitions;
mod peers;
mod quotas;
mod retention;
mod session;
pub mod topic_config;
#[doc(hidden)]
pub mod txn;

pub use compaction::CleanerStats;
pub use config::BrokerConfig;

use parking_lot::Mutex;
use shale_meta::MetaNode;
use shale_stream::StreamStore;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running broker node: one per process.
pub struct Broker {
    pub config: BrokerConfig,
    pub meta: Arc<MetaNode>,
    pub streams: Arc<StreamStore>,
    partitions: partitions::Partitions,
    /// Group coordinator for the `__consumer_offsets` partitions this node owns.
    groups: Arc<groups::GroupCoordinator>,
    /// Log-cleaner progress per owned compacted partition.
    cleaner: compaction::CleanerState,
    /// Producer ids leased from the metadata quorum, handed to idempotent producers.
    producer_ids: txn::producer_ids::ProducerIds,
    /// Transaction coordinator for the `__transaction_state` partitions this node owns.
    txn: txn::glue::TxnCoordinators,
    shutdown: watch::Sender<bool>,
    /// Set once a controlled shutdown has handed its partitions off: connections stop
    /// reading then, not at `shutdown`, so that requests sent meanwhile are answered
    /// (NOT_LEADER_OR_FOLLOWER naming the new owner) instead of cut off unanswered.
    closing: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Cleared while the broker's session is in doubt or fenced (see `membership`).
    serving: Arc<std::sync::atomic::AtomicBool>,
    /// This process's broker epoch (0 before it registered).
    broker_epoch: std::sync::atomic::AtomicU64,
    /// Owned partitions whose open failed, and when (the reconciler backs off).
    failed_opens: Mutex<std::collections::HashMap<shale_stream::StreamId, std::time::Instant>>,
    /// The topics map the reconciler last acted on.
    reconciled_topics: Mutex<Option<shale_meta::StateMap<String, shale_meta::TopicMeta>>>,
    /// Owned partitions the reconciler is opening now (each open is a task of its own).
    reconcile_opening: Mutex<std::collections::HashSet<shale_stream::StreamId>>,
    /// Bounds the reconciler's concurrent opens (`membership::CONCURRENT_OPENS`).
    open_slots: Arc<tokio::sync::Semaphore>,
    /// Producer-state checkpoints fetched for recent opens (`txn::checkpoint`).
    checkpoints: txn::checkpoint::Fetched,
    /// The authorizer (when `authorizer.class.name` enables it) and its ACL index.
    acls: authz::Acls,
    /// Client quotas in force and the rates measured against them.
    quotas: quotas::ClientQuotas,
}

impl Broker {
    /// Registers the node, opens every partition it owns and starts background work.
    pub async fn start(
        config: BrokerConfig,
        meta: Arc<MetaNode>,
        streams: Arc<StreamStore>,
    ) -> anyhow::Result<Arc<Broker>> {
        let (shutdown, _) = watch::channel(false);
        let (closing, _) = watch::channel(false);
        let config_authorizer = config.authorizer.clone();
        let config_quota = config.quota;
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let coordinator = groups::GroupCoordinator::with_serving_flag(
            groups::GroupConfig::from_broker(&config),
            serving.clone(),
        );
        let broker = Arc::new(Broker {
            config,
            meta,
            streams,
            partitions: partitions::Partitions::default(),
            groups: coordinator,
            cleaner: Default::default(),
            producer_ids: Default::default(),
            txn: Default::default(),
            shutdown,
            closing,
            tasks: Mutex::new(Vec::new()),
            serving,
            broker_epoch: std::sync::atomic::AtomicU64::new(0),
            failed_opens: Mutex::new(Default::default()),
            reconciled_topics: Mutex::new(None),
            reconcile_opening: Mutex::new(Default::default()),
            open_slots: Arc::new(tokio::sync::Semaphore::new(membership::CONCURRENT_OPENS)),
            checkpoints: Default::default(),
            acls: authz::Acls::new(config_authorizer),
            quotas: quotas::ClientQuotas::new(config_quota),
        });
        let _ = broker.txn.serving.set(broker.serving.clone());
        broker.meta.set_node_call_handler(
            broker.config.node_id as u64,
            Arc::new(peers::NodeCalls(Arc::downgrade(&broker))),
        );
        let heartbeats = broker.register().await?;
        broker.open_owned_partitions().await?;
        let membership = tokio::spawn(membership::run(broker.clone(), heartbeats));
        broker.tasks.lock().push(membership);
        let reconciler = internal_topics::follow_ownership(&broker, membership::reconcile);
        broker.tasks.lock().push(reconciler);
        groups::start(&broker).await?;
        txn::glue::start(&broker).await?;
        let retention = tokio::spawn(retention::run(broker.clone()));
        broker.tasks.lock().push(retention);
        let cleaner = tokio::spawn(compaction::run(broker.clone()));
        broker.tasks.lock().push(cleaner);
        let expiry = tokio::spawn(txn::producer_ids::expire_producers(broker.clone()));
        broker.tasks.lock().push(expiry);
        let snapshots = tokio::spawn(txn::snapshot::run(broker.clone()));
        broker.tasks.lock().push(snapshots);
        let checkpoints = tokio::spawn(txn::checkpoint::run(broker.clone()));
        broker.tasks.lock().push(checkpoints);
        if broker.config.auditor.is_enabled() {
            let membership = audit::follow_membership(&broker);
            broker.tasks.lock().push(membership);
        }
        Ok(broker)
    }

    /// Accepts plaintext Kafka connections (every client is `User:ANONYMOUS`) until a
    /// shutdown has handed the partitions off.
    pub async fn serve(self: &Arc<Self>, listener: TcpListener) {
        let plaintext = Arc::new(shale_security::listener::ListenerSecurity::plaintext(
            "PLAINTEXT",
        ));
        self.serve_listener(listener, plaintext).await
    }

    /// Accepts Kafka connections on a listener with `security` until a shutdown has handed
    /// the partitions off. As Kafka's controlled shutdown, the listener stays open
    /// meanwhile: a client that reconnects is told where its partitions went, and the
    /// controller's crash probe (a refused connect means the process is gone) does not take
    /// a node that is handing off for a dead one.
    pub async fn serve_listener(
        self: &Arc<Self>,
        listener: TcpListener,
        security: Arc<shale_security::listener::ListenerSecurity>,
    ) {
        // As Kafka's authorizer waits for its initial load: serve under the ACLs the quorum
        // has now, not a replica that may not have replayed a revocation made while this
        // node was down.
        if self.acls_enabled() {
            match tokio::time::timeout(std::time::Duration::from_secs(30), self.meta.read_barrier())
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "ACLs may be stale: read barrier failed"),
                Err(_) => tracing::warn!("ACLs may be stale: read barrier timed out"),
            }
        }
        let mut stop = self.closing.subscribe();
        let tls = security
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let _ = socket.set_nodelay(true);
                        let (broker, security) = (self.clone(), security.clone());
                        match &tls {
                            None => {
                                let mut session = session::Session::new(
                                    security,
                                    peer,
                                    shale_security::principal::KafkaPrincipal::anonymous(),
                                );
                                session.auditor = broker.config.auditor.clone();
                                tokio::spawn(connection::serve(broker, socket, session));
                            }
                            Some(acceptor) => {
                                let acceptor = acceptor.clone();
                                tokio::spawn(async move {
                                    let auditor = broker.config.auditor.clone();
                                    if let Some((stream, session)) =
                                        tls_handshake(acceptor, socket, peer, security, auditor)
                                            .await
                                    {
                                        connection::serve(broker, stream, session).await;
                                    }
                                });
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Drains the WAL (in-flight appends are committed and acked), hands its partitions to
    /// the other live brokers (a controlled shutdown), stops accepting and stops.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        // A metadata leader hands leadership over first: the drain's WAL commits and the
        // hand-off's moves then go to a leader that stays, not through an election.
        self.meta.step_down().await;
        // A fresh producer-state snapshot spares the next start its scan; bounded, so a
        // failing store cannot hold the shutdown.
        if !self.config.producer_state_snapshot_interval.is_zero() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.snapshot_producer_states_now(),
            )
            .await;
        }
        self.groups.unload_all();
        self.streams.shutdown().await;
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.checkpoint_drained().await;
        // Everything acknowledged is durable now: give the partitions away rather than make
        // clients wait out the session timeout.
        self.hand_off().await;
        // Requests that came in meanwhile were answered, naming the new owners; connections
        // close once idle, and their writers send what is left.
        self.closing.send_replace(true);
        tokio::time::sleep(connection::CLOSING_IDLE * 3).await;
        self.meta.shutdown().await;
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Fires when connections should stop reading requests (after the hand-off).
    pub(crate) fn closing_signal(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

/// A TLS handshake may take this long before the connection is dropped: a client that
/// connects and says nothing must not hold a task and a socket for ever.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Completes a TLS handshake and establishes the connection's principal from its client
/// certificate (SSL listeners; on SASL_SSL, SASL sets the principal afterwards). `None`
/// (logged) when the handshake fails or the certificate maps to no principal.
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    security: Arc<shale_security::listener::ListenerSecurity>,
    auditor: shale_security::audit::Auditor,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    session::Session,
)> {
    use shale_security::audit::{AuditEvent, Client, Outcome};
    let client = || Client::new(security.name.clone(), peer.ip().to_string());
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, listener = %security.name, error = %e, "TLS handshake failed");
            metrics::counter!("shale_authentication_failures_total", "listener" => security.name.clone())
                .increment(1);
            // A bad or missing client certificate (unknown CA, expired) ends here.
            let _ = auditor.record(
                AuditEvent::authentication(client(), "TLS", None, Outcome::Failed)
                    .with_reason(e.to_string()),
            );
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, listener = %security.name, "TLS handshake timed out");
            return None;
        }
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let principal = if security.protocol.uses_sasl() {
        shale_security::principal::KafkaPrincipal::anonymous()
    } else {
        match security.tls_principal(cert.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(
                    %peer, listener = %security.name, error = %e,
                    "authentication failed: the client certificate maps to no principal"
                );
                metrics::counter!("shale_authentication_failures_total", "listener" => security.name.clone())
                    .increment(1);
                let _ = auditor.record(
                    AuditEvent::authentication(client(), "TLS", None, Outcome::Failed)
                        .with_reason(e.to_string()),
                );
                return None;
            }
        }
    };
    if cert.is_some() && !security.protocol.uses_sasl() {
        // mTLS is the authentication on an SSL listener; a refusal to record it refuses the
        // connection (fail-closed).
        let event = AuditEvent::authentication(
            client(),
            "TLS",
            Some(principal.to_string()),
            Outcome::Succeeded,
        );
        if auditor.record(event).is_err() {
            return None;
        }
    }
    tracing::debug!(%peer, %principal, listener = %security.name, "TLS connection established");
    let mut session = session::Session::new(security, peer, principal);
    session.auditor = auditor;
    Some((stream, session))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

//! The broker as a member of the cluster: its registration and heartbeats (the metadata
//! quorum fences it when they stop), whether it may serve what it owns, and the reconciler
//! that keeps its open partitions in line with what the metadata says it owns.
//!
//! - At start the broker registers with a random incarnation and gets its broker epoch, then
//!   heartbeats the metadata leader (`shale_meta::liveness`).
//! - [`BrokerStatus::Expired`] (no heartbeat answered for most of the session) stops serving
//!   at once: the controller may be about to give the partitions to another broker, and the
//!   new owner's open fences this one's handles anyway; serving stops first so no client is
//!   answered from a handle about to lose the race. It resumes when heartbeats are answered
//!   again.
//! - [`BrokerStatus::Fenced`]: the partitions were (or are being) moved; the broker closes
//!   everything it has open, registers again (a new epoch) and serves what it owns then.
//! - The reconciler runs on every metadata change (and a timer): it opens partitions this
//!   node now owns, so their new owner takes over the stream (its open bumps the stream
//!   epoch) without waiting for a client, and closes those it no longer owns.

use crate::Broker;
use shale_meta::BrokerStatus;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Broker {
    /// Whether this node may serve the partitions it owns now.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    fn node_meta(&self) -> shale_meta::NodeMeta {
        shale_meta::NodeMeta {
            id: self.config.node_id as u64,
            host: self.config.advertised_host.clone(),
            port: self.config.advertised_port,
            rack: self.config.rack.clone(),
        }
    }

    /// Registers this process (a new incarnation) and returns its heartbeats.
    pub(crate) async fn register(&self) -> anyhow::Result<shale_meta::Heartbeats> {
        let incarnation = *uuid::Uuid::new_v4().as_bytes();
        let epoch = self
            .meta
            .register_broker(self.node_meta(), incarnation)
            .await?;
        tracing::info!(
            node_id = self.config.node_id,
            broker_epoch = epoch,
            "registered with the metadata quorum"
        );
        self.broker_epoch.store(epoch, Ordering::Release);
        // Streams open only for their partition's owner at this registration.
        self.streams.set_open_claim(Some(shale_stream::OpenClaim {
            holder: self.config.node_id as u64,
            holder_epoch: epoch,
        }));
        Ok(self.meta.start_heartbeats(
            self.config.node_id as u64,
            epoch,
            self.config.broker_heartbeat_interval,
            self.config.broker_session_timeout,
        ))
    }
}

/// Whether the node is ready (the admin HTTP `/ready`): registered, not fenced nor in doubt,
/// and every data partition it owns open. `Err` says what is missing.
impl Broker {
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_shutting_down() {
            return Err("shutting down".into());
        }
        let epoch = self.broker_epoch.load(Ordering::Acquire);
        if epoch == 0 {
            return Err("not registered with the metadata quorum".into());
        }
        if !self.serving() {
            return Err("session in doubt or fenced: not serving".into());
        }
        let me = self.config.node_id as u64;
        let fenced = self.meta.read(|s| {
            s.brokers
                .get(&me)
                .is_none_or(|b| b.fenced || b.epoch != epoch)
        });
        if fenced {
            return Err(format!("registration (broker epoch {epoch}) is fenced"));
        }
        let open: std::collections::HashSet<_> = self.open_stream_ids().into_iter().collect();
        let closed = self.meta.read(|s| {
            s.topics
                .values()
                .filter(|t| !crate::handlers::topics::is_internal(&t.name))
                .flat_map(|t| t.partitions.iter())
                .filter(|p| p.owner == me && !open.contains(&p.stream_id))
                .count()
        });
        metrics::gauge!("shale_owned_partitions_closed").set(closed as f64);
        if closed > 0 {
            return Err(format!("{closed} owned partitions not open yet"));
        }
        Ok(())
    }
}

/// Follows the broker's heartbeat status until shutdown (see the module docs).
pub(crate) async fn run(broker: Arc<Broker>, mut heartbeats: shale_meta::Heartbeats) {
    let mut stop = broker.shutdown_signal();
    loop {
        let mut status = heartbeats.status();
        let now = *status.borrow_and_update();
        match now {
            BrokerStatus::Live => {
                if !broker.serving.swap(true, Ordering::AcqRel) {
                    tracing::info!("heartbeats answered again: serving");
                }
            }
            BrokerStatus::Expired => {
                if broker.serving.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        "no heartbeat answered by the metadata leader: not serving until one is"
                    );
                }
            }
            BrokerStatus::Fenced => {
                broker.serving.store(false, Ordering::Release);
                tracing::warn!("fenced by the controller: closing partitions, registering again");
                close_all(&broker).await;
                loop {
                    match broker.register().await {
                        Ok(h) => {
                            heartbeats = h;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registration failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(broker.config.broker_heartbeat_interval) => {}
                                _ = stop.changed() => return,
                            }
                        }
                    }
                }
                broker.serving.store(true, Ordering::Release);
                // Everything was closed: a full pass, whatever the topics look like.
                *broker.reconciled_topics.lock() = None;
                reconcile(broker.clone()).await;
                continue;
            }
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Longest a controlled shutdown waits for its partitions to move.
const HAND_OFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Broker {
    /// A controlled shutdown's hand-off (Kafka's controlled shutdown): this broker fences
    /// itself, the controller moves its partitions to the live brokers at its next tick, and
    /// the call returns once none is left here (or after [`HAND_OFF_TIMEOUT`]). Called after
    /// the WAL is drained, so a new owner opens streams holding every acknowledged record.
    /// Without another live broker there is nobody to hand to: nothing happens.
    pub(crate) async fn hand_off(&self) {
        let me = self.config.node_id as u64;
        let epoch = self.broker_epoch.load(Ordering::Acquire);
        let others = self
            .meta
            .read(|s| s.brokers.iter().any(|(id, b)| *id != me && !b.fenced));
        if epoch == 0 || !others {
            return;
        }
        if let Err(e) = self.meta.fence_broker(me, epoch).await {
            tracing::warn!(error = %e, "controlled shutdown: cannot hand partitions off");
            return;
        }
        let owns_any = |s: &shale_meta::ClusterState| {
            s.topics
                .values()
                .any(|t| t.partitions.iter().any(|p| p.owner == me))
        };
        let deadline = tokio::time::Instant::now() + HAND_OFF_TIMEOUT;
        let mut changes = self.meta.changes();
        while tokio::time::Instant::now() < deadline {
            if self.meta.read_barrier().await.is_ok() && !self.meta.read(owns_any) {
                tracing::info!("controlled shutdown: partitions handed off");
                return;
            }
            // The moves arrive as a metadata change; the timeout covers a barrier that failed.
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(50), changes.changed()).await;
        }
        tracing::warn!("controlled shutdown: partitions not all moved in time");
    }
}

async fn close_all(broker: &Arc<Broker>) {
    for id in broker.open_stream_ids() {
        broker.close_stream(id).await;
    }
}

/// Opens the data partitions this node owns and has not open, closes those it has open but
/// no longer owns. Coordinator partitions (`__consumer_offsets`, `__transaction_state`) are
/// their coordinators' business (`internal_topics::follow_ownership`).
pub(crate) async fn reconcile(broker: Arc<Broker>) {
    if !broker.serving() || broker.is_shutting_down() {
        return;
    }
    // Most metadata changes are WAL commits, which leave the topics map untouched: skip the
    // O(partitions) scan unless ownership could have changed or an open waits for a retry.
    // The map is a persistent one, so the copy is O(1) and `ptr_eq` tells "unchanged".
    let topics = broker.meta.read(|s| s.topics.clone());
    {
        let mut last = broker.reconciled_topics.lock();
        let unchanged = last.as_ref().is_some_and(|t| t.ptr_eq(&topics));
        if unchanged && broker.failed_opens.lock().is_empty() {
            return;
        }
        *last = Some(topics.clone());
    }
    let me = broker.config.node_id as u64;
    let (owned, not_owned): (Vec<_>, Vec<_>) = {
        let mut owned = Vec::new();
        let mut not_owned = Vec::new();
        for t in topics
            .values()
            .filter(|t| !crate::handlers::topics::is_internal(&t.name))
        {
            for p in &t.partitions {
                if p.owner == me {
                    owned.push(p.stream_id);
                } else {
                    not_owned.push(p.stream_id);
                }
            }
        }
        (owned, not_owned)
    };
    let open: std::collections::HashSet<_> = broker.open_stream_ids().into_iter().collect();
    // A handle left from before another node opened the stream (ownership went away and
    // came back while this node's open was slow) is stale: open it again.
    let current: std::collections::HashSet<_> = broker
        .open_partitions()
        .into_iter()
        .filter(|o| o.stream.is_current())
        .map(|o| o.stream.id())
        .collect();
    for id in not_owned.into_iter().filter(|id| open.contains(id)) {
        tracing::info!(stream = id, "partition moved to another node: closing");
        metrics::counter!("shale_ownership_changes_total", "change" => "lost").increment(1);
        broker.close_stream(id).await;
    }
    let now = std::time::Instant::now();
    broker
        .failed_opens
        .lock()
        .retain(|_, at| now.duration_since(*at) < OPEN_RETRY);
    let to_open: Vec<_> = owned
        .into_iter()
        .filter(|id| !current.contains(id) && !broker.failed_opens.lock().contains_key(id))
        .collect();
    // Each open is a task of its own, at most CONCURRENT_OPENS at once: each is a metadata
    // write and a read of the producer state, and a failover hands a node many partitions at
    // once, sometimes in several moves; awaiting them here would hold the next move's opens
    // until the previous batch is done (two nodes killed at once opened in two rounds).
    for id in to_open {
        if !broker.reconcile_opening.lock().insert(id) {
            continue;
        }
        let broker = broker.clone();
        tokio::spawn(async move {
            let slot = broker.open_slots.clone().acquire_owned().await;
            let started = std::time::Instant::now();
            match broker.open_owned(id).await {
                Ok(_) if !broker.owns_stream(id) => {
                    // Ownership moved on while the open was in progress (a slow scan): the
                    // reconciler that saw the move could not close what was not open yet.
                    tracing::info!(stream = id, "partition moved away while opening: closing");
                    broker.close_stream(id).await;
                }
                Ok(owned) => {
                    metrics::counter!("shale_ownership_changes_total", "change" => "gained")
                        .increment(1);
                    tracing::info!(
                        stream = id,
                        ms = started.elapsed().as_millis() as u64,
                        scanned_from = owned.loaded_from,
                        end = owned.stream.end_offset(),
                        "partition gained: opened"
                    );
                }
                Err(e) => {
                    // Retried after OPEN_RETRY (every metadata change would be far too
                    // often while the store is out), or on first use.
                    tracing::debug!(stream = id, error = %e, "cannot open an owned partition yet");
                    broker.note_open_failed(id);
                }
            }
            drop(slot);
            broker.reconcile_opening.lock().remove(&id);
        });
    }
}

impl Broker {
    /// Whether this node owns the data partition of stream `id` now (local replica).
    fn owns_stream(&self, id: shale_stream::StreamId) -> bool {
        let me = self.config.node_id as u64;
        self.meta.read(|s| {
            s.topics
                .values()
                .flat_map(|t| &t.partitions)
                .any(|p| p.stream_id == id && p.owner == me)
        })
    }
}

/// Partitions opened (or coordinator partitions loaded) at once after an ownership change.
pub(crate) const CONCURRENT_OPENS: usize = 8;

/// How long the reconciler leaves a partition whose open failed before trying again.
const OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

impl Broker {
    /// Whether opening (or loading) `id` failed less than [`OPEN_RETRY`] ago: the
    /// coordinators' loaders wait that long before trying again, as the reconciler does, so
    /// a store or quorum outage is not retried at the rate of metadata changes.
    pub(crate) fn open_failed_recently(&self, id: shale_stream::StreamId) -> bool {
        self.failed_opens
            .lock()
            .get(&id)
            .is_some_and(|at| at.elapsed() < OPEN_RETRY)
    }

    pub(crate) fn note_open_failed(&self, id: shale_stream::StreamId) {
        self.failed_opens
            .lock()
            .insert(id, std::time::Instant::now());
    }
}

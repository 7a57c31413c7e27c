//! What the two coordinators share (groups on `__consumer_offsets`, transactions on
//! `__transaction_state`): their compacted internal topic, created at start, and the task
//! that keeps the partitions a node has loaded in line with what it owns.

use crate::Broker;
use kafka_protocol::error::ResponseError;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often owned coordinator partitions that failed to load are tried again.
const LOAD_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Creates the compacted internal topic `name` with `partitions` if it does not exist.
pub(crate) async fn ensure_compacted_topic(
    broker: &Arc<Broker>,
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    if broker.meta.read(|s| s.topics.contains_key(name)) {
        return Ok(());
    }
    let configs = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    let spread = shale_meta::Placement::Spread;
    match crate::handlers::topics::create_topic(broker, name, partitions, configs, spread).await {
        Ok(()) => tracing::info!(partitions, "created {name}"),
        Err((ResponseError::TopicAlreadyExists, _)) => {}
        Err((code, msg)) => anyhow::bail!("cannot create {name}: {code:?} {msg}"),
    }
    Ok(())
}

/// Runs `sync` after every metadata change, and on a timer too: a partition whose load
/// failed (object store outage) is left unloaded and must be retried even when no metadata
/// changes. Ends at shutdown.
pub(crate) fn follow_ownership<F, Fut>(broker: &Arc<Broker>, sync: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Broker>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let broker = broker.clone();
    tokio::spawn(async move {
        let mut changes = broker.meta.changes();
        let mut stop = broker.shutdown_signal();
        let mut retry = tokio::time::interval(LOAD_RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = retry.tick() => {}
                _ = stop.changed() => return,
            }
            sync(broker.clone()).await;
        }
    })
}

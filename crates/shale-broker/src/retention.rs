//! Time and size retention: periodically raises each owned partition's start offset per its
//! topic's `retention.ms` / `retention.bytes`; the stream layer then deletes dead objects.

use crate::Broker;
use crate::topic_config;
use std::sync::Arc;

pub(crate) async fn run(broker: Arc<Broker>) {
    let mut stop = broker.shutdown_signal();
    let mut tick = tokio::time::interval(broker.config.retention_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        apply_once(&broker).await;
    }
}

impl Broker {
    /// Applies time and size retention to every partition this node owns now (tests, admin
    /// tools); the background task does the same every `log.retention.check.interval.ms`.
    pub async fn apply_retention_now(&self) {
        apply_once(self).await
    }
}

pub(crate) async fn apply_once(broker: &Broker) {
    let me = broker.config.node_id as u64;
    let work: Vec<(String, u64, i64, i64, bool)> = broker.meta.read(|s| {
        s.topics
            .values()
            .flat_map(|t| {
                let defaults = &broker.config.topic_defaults;
                let ms = topic_config::effective_i64("retention.ms", &t.configs, defaults);
                let bytes = topic_config::effective_i64("retention.bytes", &t.configs, defaults);
                let delete = topic_config::effective_str("cleanup.policy", &t.configs, defaults)
                    .split(',')
                    .any(|p| p.trim() == "delete");
                t.partitions
                    .iter()
                    .filter(|p| p.owner == me)
                    .map(move |p| (t.name.clone(), p.stream_id, ms, bytes, delete))
            })
            .collect()
    });
    let now = crate::now_ms();
    for (topic, stream, ms, bytes, delete) in work {
        if !delete {
            continue;
        }
        let ms = (ms >= 0).then_some(ms);
        let bytes = (bytes >= 0).then_some(bytes as u64);
        if ms.is_none() && bytes.is_none() {
            continue;
        }
        match broker.streams.apply_retention(stream, now, ms, bytes).await {
            Ok(Some(start)) => tracing::info!(topic, stream, start, "retention trimmed partition"),
            Ok(None) => {}
            Err(e) => tracing::warn!(topic, stream, error = %e, "retention failed"),
        }
    }
}

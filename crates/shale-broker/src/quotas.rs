//! Client quotas on the request path: which requests count, how a throttle reaches the
//! client, and the quota table kept in step with the metadata quorum.
//!
//! As in Kafka (KIP-219), a request over its quota is still served; its response carries
//! `throttle_time_ms` and goes out at once, and the connection is then muted (no request of
//! it is started) for that long, so a client that ignores the field is held back anyway.
//! A throttled fetch answers no records (they would only add to the overshoot) and its
//! bytes are not counted. What counts:
//! - Produce: the request's size;
//! - Fetch: the record bytes of the response;
//! - request time: the time the node spends working on the request (its polls, not its
//!   waits for durability or a long poll), as a percentage of one thread.
//!
//! Inter-broker requests, ApiVersions and the SASL exchange are never throttled; acks=0
//! produces are not counted for request time (their client reads no response), as in Kafka.

use crate::Broker;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use parking_lot::Mutex;
use shale_meta::{ClientQuotaMeta, StateMap};
use shale_security::quota::{CLIENT_ID, QuotaConfig, QuotaTable, QuotaType, Quotas, USER};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The node's quotas and the stored quotas they were built from.
pub(crate) struct ClientQuotas {
    quotas: Quotas,
    seen: Mutex<Option<StateMap<String, ClientQuotaMeta>>>,
    epoch: Instant,
}

impl ClientQuotas {
    pub(crate) fn new(config: QuotaConfig) -> ClientQuotas {
        ClientQuotas {
            quotas: Quotas::new(config),
            seen: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds on the node's monotonic clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The stored quotas as a lookup table.
fn table(stored: &StateMap<String, ClientQuotaMeta>) -> QuotaTable {
    QuotaTable::new(stored.values().map(|q| {
        let part = |t: &str| {
            q.entity
                .iter()
                .find(|(et, _)| et == t)
                .map(|(_, name)| name.as_deref())
        };
        (
            part(USER),
            part(CLIENT_ID),
            q.values.iter().map(|(k, v)| (k.as_str(), v.0)).collect(),
        )
    }))
}

impl Broker {
    /// The quotas in force, `None` when none is set (then nothing is measured). Rebuilt
    /// when the quorum's quotas changed (a pointer comparison otherwise).
    pub(crate) fn quotas_in_force(&self) -> Option<&Quotas> {
        let stored = self.meta.read(|s| s.client_quotas.clone());
        let q = &self.quotas;
        {
            let mut seen = q.seen.lock();
            if !seen.as_ref().is_some_and(|s| s.ptr_eq(&stored)) {
                q.quotas.set_table(table(&stored));
                *seen = Some(stored);
            }
        }
        (!q.quotas.table().is_empty()).then_some(&q.quotas)
    }

    pub(crate) fn quota_clock_ms(&self) -> u64 {
        self.quotas.now_ms()
    }
}

/// What one request counts for, decided when it starts.
pub(crate) struct RequestQuota {
    pub user: String,
    pub client_id: String,
    /// The throttle its bytes earned already (a produce's size is known up front).
    pub throttle_ms: u64,
    /// Whether its time counts for `request_percentage` (not for acks=0 produces).
    pub count_time: bool,
}

/// Whether requests of `api` are measured at all.
pub(crate) fn counts(api: ApiKey) -> bool {
    !matches!(
        api,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    )
}

/// Request time as Kafka counts it for `request_percentage`: percent-seconds.
pub(crate) fn request_time_value(spent: Duration) -> f64 {
    spent.as_secs_f64() * 100.0
}

/// Sets `throttle_time_ms` in a response (the field of every API that has one; versions
/// that lack it do not encode it).
pub(crate) fn set_throttle_time(resp: &mut ResponseKind, ms: i32) {
    macro_rules! throttle {
        ($($kind:ident),* $(,)?) => {
            match resp {
                $(ResponseKind::$kind(r) => r.throttle_time_ms = ms,)*
                _ => {}
            }
        };
    }
    throttle!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        OffsetForLeaderEpoch,
        DescribeConfigs,
        AlterConfigs,
        CreatePartitions,
        IncrementalAlterConfigs,
        DescribeCluster,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        OffsetCommit,
        OffsetFetch,
        OffsetDelete,
        InitProducerId,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        TxnOffsetCommit,
        DescribeProducers,
        DescribeTransactions,
        ListTransactions,
        CreateAcls,
        DescribeAcls,
        DeleteAcls,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        DescribeClientQuotas,
        AlterClientQuotas,
    );
}

/// A future that adds up the time spent in its polls: the work a request costs the node,
/// without its waits.
pub(crate) struct Timed<F> {
    inner: Pin<Box<F>>,
    pub spent: Duration,
}

impl<F> Timed<F> {
    pub(crate) fn new(inner: F, spent: Duration) -> Timed<F> {
        Timed {
            inner: Box::pin(inner),
            spent,
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = (F::Output, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        self.spent += started.elapsed();
        polled.map(|out| (out, self.spent))
    }
}

impl RequestQuota {
    /// Starts counting a request of `api`, `None` when it is not subject to quotas (no
    /// quota set, an exempt API, a node-to-node request).
    pub(crate) fn start(
        broker: &Broker,
        ctx: &crate::authz::RequestContext,
        api: ApiKey,
        frame: &[u8],
    ) -> Option<RequestQuota> {
        if ctx.inter_broker || !counts(api) {
            return None;
        }
        let quotas = broker.quotas_in_force()?;
        let user = ctx.principal.name.clone();
        let client_id = crate::handlers::groups::client_id(frame);
        let throttle_ms = if api == ApiKey::Produce {
            quotas.record(
                QuotaType::Produce,
                &user,
                &client_id,
                frame.len() as f64,
                broker.quota_clock_ms(),
            )
        } else {
            0
        };
        Some(RequestQuota {
            user,
            client_id,
            throttle_ms,
            count_time: true,
        })
    }

    /// The most record bytes a fetch may answer with: what fits the fetch quota's window.
    pub(crate) fn fetch_max_bytes(&self, broker: &Broker) -> Option<i32> {
        // The table was brought up to date when the request started.
        let quotas = &broker.quotas.quotas;
        let max = quotas.max_value_in_window(QuotaType::Fetch, &self.user, &self.client_id)?;
        Some(max.clamp(1.0, f64::from(i32::MAX)) as i32)
    }

    /// Records the request's time (and a fetch's bytes) once it is answered; returns the
    /// throttle (ms), 0 when the client is within its quotas. A throttled fetch is to be
    /// answered without records (its bytes are taken back here).
    pub(crate) fn finish(&self, broker: &Broker, spent: Duration, fetched: Option<u64>) -> u64 {
        // As at the start: no second look at the metadata per request. A quota removed
        // meanwhile resolves to nothing and records nothing.
        let quotas = &broker.quotas.quotas;
        let now = broker.quota_clock_ms();
        let mut throttle = self.throttle_ms;
        if self.count_time {
            throttle = throttle.max(quotas.record(
                QuotaType::Request,
                &self.user,
                &self.client_id,
                request_time_value(spent),
                now,
            ));
        }
        if let Some(bytes) = fetched {
            let fetch = quotas.record(
                QuotaType::Fetch,
                &self.user,
                &self.client_id,
                bytes as f64,
                now,
            );
            throttle = throttle.max(fetch);
            if throttle > 0 {
                // The fetch is answered without its records: they do not count.
                quotas.unrecord(
                    QuotaType::Fetch,
                    &self.user,
                    &self.client_id,
                    bytes as f64,
                    now,
                );
            }
        }
        if throttle > 0 {
            metrics::counter!("shale_quota_throttled_total").increment(1);
            tracing::debug!(
                user = %self.user,
                client_id = %self.client_id,
                throttle_ms = throttle,
                "client over its quota: throttled"
            );
        }
        throttle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_meta::QuotaValue;

    #[test]
    fn stored_quotas_become_the_lookup_table() {
        let mut stored = StateMap::new();
        for (entity, rate) in [
            (vec![(USER.to_string(), Some("alice".to_string()))], 100.0),
            (
                vec![
                    (CLIENT_ID.to_string(), None),
                    (USER.to_string(), Some("bob".to_string())),
                ],
                200.0,
            ),
        ] {
            stored.insert(
                shale_meta::quota_entity_key(&entity),
                ClientQuotaMeta {
                    entity,
                    values: [("producer_byte_rate".to_string(), QuotaValue(rate))].into(),
                },
            );
        }
        let t = table(&stored);
        assert_eq!(
            t.resolve(QuotaType::Produce, "alice", "x").unwrap().0,
            100.0
        );
        assert_eq!(t.resolve(QuotaType::Produce, "bob", "x").unwrap().0, 200.0);
        assert!(t.resolve(QuotaType::Produce, "carol", "x").is_none());
    }

    #[test]
    fn the_throttle_time_lands_in_the_response() {
        let mut r = ResponseKind::Produce(Default::default());
        set_throttle_time(&mut r, 250);
        let ResponseKind::Produce(p) = r else {
            unreachable!()
        };
        assert_eq!(p.throttle_time_ms, 250);
    }
}

//! Client quotas with Kafka's semantics (KIP-13, KIP-55, KIP-124, KIP-219).
//!
//! - Three quota types: produce and fetch byte rates (`producer_byte_rate`,
//!   `consumer_byte_rate`, bytes per second) and request time (`request_percentage`, percent
//!   of one thread's time).
//! - Set on users, client ids, (user, client id) pairs, or the defaults of each. The most
//!   specific entity that sets a type wins, in Kafka's order of precedence (see
//!   [`QuotaTable::resolve`]); it also decides who shares a rate: a quota on user `alice`
//!   is one rate over all her client ids, a default-user quota one rate per user.
//! - Rates are measured as Kafka's `Rate` over `quota.window.num` samples of
//!   `quota.window.size.seconds`. A request is recorded, then checked: one that takes the rate
//!   over the bound is served, and the client is throttled for as long as it takes the rate to
//!   fall back to the bound, `(rate - bound) / bound * window` (request-time throttles are
//!   capped at one sample window, as Kafka's).
//!
//! Sensors (the per-entity rates) are kept for active entities only: one idle for a whole
//! window has a rate of zero, the same as a new one, so it is dropped; their number is also
//! capped, and they are keyed by a keyed hash of the entity (not its names, which clients
//! choose and may make long), so client ids cannot grow memory without bound.
//!
//! One deviation: a byte-rate throttle is capped at the whole window (`samples × window`,
//! 11 s by default; Kafka's is unbounded). By then every sample of the burst has left the
//! window, and a muted connection is not held for minutes.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaType {
    Produce,
    Fetch,
    Request,
}

impl QuotaType {
    pub const ALL: [QuotaType; 3] = [QuotaType::Produce, QuotaType::Fetch, QuotaType::Request];

    /// The quota's key in AlterClientQuotas and `kafka-configs.sh`.
    pub fn key(self) -> &'static str {
        match self {
            QuotaType::Produce => "producer_byte_rate",
            QuotaType::Fetch => "consumer_byte_rate",
            QuotaType::Request => "request_percentage",
        }
    }

    pub fn from_key(key: &str) -> Option<QuotaType> {
        QuotaType::ALL.into_iter().find(|t| t.key() == key)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The entity types quotas can be set on.
pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";

/// One part (user or client id) of a stored entity: absent (`None`), the default
/// (`Some(None)`), or a name (`Some(Some(name))`).
pub type EntityPart<'a> = Option<Option<&'a str>>;

/// The bounds one entity sets, by [`QuotaType`] (`None`: not set here).
pub type Bounds = [Option<f64>; 3];

/// The quotas of one user entity (a named user or the default user).
#[derive(Debug, Default, Clone)]
struct UserQuotas {
    /// `/config/users/<user>`
    own: Bounds,
    /// `/config/users/<user>/clients/<default>`
    default_client: Bounds,
    /// `/config/users/<user>/clients/<client-id>`
    clients: HashMap<String, Bounds>,
}

/// Every configured quota, indexed for lookups by `&str` (no allocation per request).
#[derive(Debug, Default, Clone)]
pub struct QuotaTable {
    users: HashMap<String, UserQuotas>,
    default_user: UserQuotas,
    /// `/config/clients/<client-id>`
    clients: HashMap<String, Bounds>,
    /// `/config/clients/<default>`
    default_client: Bounds,
    empty: bool,
}

/// Whose rate a request counts towards: the user and client id parts of the entity that
/// matched, `""` where the matching entity has no such part (Kafka's metric tags).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SensorKey {
    pub user: String,
    pub client_id: String,
}

impl QuotaTable {
    /// Builds the table from stored entities: `(user, client id)` parts, each absent,
    /// the default (`Some(None)`), or named (`Some(Some(name))`), with their values by key.
    /// Keys other than the three quota types are ignored.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (EntityPart<'a>, EntityPart<'a>, Vec<(&'a str, f64)>)>,
    ) -> QuotaTable {
        let mut t = QuotaTable::default();
        for (user, client, values) in entries {
            let mut bounds: Bounds = [None; 3];
            for (k, v) in values {
                if let Some(q) = QuotaType::from_key(k) {
                    bounds[q.index()] = Some(v);
                }
            }
            let slot = match (user, client) {
                (None, None) => continue,
                (Some(u), c) => {
                    let uq = match u {
                        Some(name) => t.users.entry(name.to_string()).or_default(),
                        None => &mut t.default_user,
                    };
                    match c {
                        None => &mut uq.own,
                        Some(None) => &mut uq.default_client,
                        Some(Some(c)) => uq.clients.entry(c.to_string()).or_default(),
                    }
                }
                (None, Some(Some(c))) => t.clients.entry(c.to_string()).or_default(),
                (None, Some(None)) => &mut t.default_client,
            };
            *slot = bounds;
        }
        t.empty = t.users.is_empty()
            && t.clients.is_empty()
            && is_unset(&t.default_client)
            && is_unset(&t.default_user.own)
            && is_unset(&t.default_user.default_client)
            && t.default_user.clients.is_empty();
        t
    }

    /// Whether no quota is set at all (then nothing is measured).
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The bound on `kind` for this user and client id, and whose rate it is, by Kafka's
    /// precedence:
    /// 1. `/config/users/<user>/clients/<client-id>`
    /// 2. `/config/users/<user>/clients/<default>`
    /// 3. `/config/users/<user>`
    /// 4. `/config/users/<default>/clients/<client-id>`
    /// 5. `/config/users/<default>/clients/<default>`
    /// 6. `/config/users/<default>`
    /// 7. `/config/clients/<client-id>`
    /// 8. `/config/clients/<default>`
    pub fn resolve(
        &self,
        kind: QuotaType,
        user: &str,
        client_id: &str,
    ) -> Option<(f64, SensorKey)> {
        if self.empty {
            return None;
        }
        let i = kind.index();
        let key = |u: &str, c: &str| SensorKey {
            user: u.to_string(),
            client_id: c.to_string(),
        };
        if let Some(uq) = self.users.get(user) {
            if let Some(b) = uq.clients.get(client_id).and_then(|b| b[i]) {
                return Some((b, key(user, client_id)));
            }
            if let Some(b) = uq.default_client[i] {
                return Some((b, key(user, client_id)));
            }
            if let Some(b) = uq.own[i] {
                return Some((b, key(user, "")));
            }
        }
        let du = &self.default_user;
        if let Some(b) = du.clients.get(client_id).and_then(|b| b[i]) {
            return Some((b, key(user, client_id)));
        }
        if let Some(b) = du.default_client[i] {
            return Some((b, key(user, client_id)));
        }
        if let Some(b) = du.own[i] {
            return Some((b, key(user, "")));
        }
        if let Some(b) = self.clients.get(client_id).and_then(|b| b[i]) {
            return Some((b, key("", client_id)));
        }
        self.default_client[i].map(|b| (b, key("", client_id)))
    }
}

fn is_unset(b: &Bounds) -> bool {
    b.iter().all(Option::is_none)
}

/// `quota.window.num` and `quota.window.size.seconds`.
#[derive(Debug, Clone, Copy)]
pub struct QuotaConfig {
    pub samples: u32,
    pub window_ms: u64,
    /// Most sensors kept at once; past it the longest idle one is dropped.
    pub max_sensors: usize,
}

impl Default for QuotaConfig {
    /// Kafka's defaults: 11 samples of 1 s.
    fn default() -> Self {
        QuotaConfig {
            samples: 11,
            window_ms: 1000,
            max_sensors: 100_000,
        }
    }
}

/// Kafka's `Rate` over a `SampledStat`: the sum of the live samples over the time they
/// span, counted as at least `samples - 1` full windows so a new sensor does not see a
/// burst as a huge rate.
#[derive(Debug, Clone)]
struct Rate {
    /// (start ms, value) per sample; `current` is the one being filled.
    samples: Vec<(u64, f64)>,
    current: usize,
    last_used_ms: u64,
}

impl Rate {
    fn new(config: &QuotaConfig, now_ms: u64) -> Rate {
        Rate {
            samples: vec![(now_ms, 0.0); config.samples.max(2) as usize],
            current: 0,
            last_used_ms: now_ms,
        }
    }

    fn record(&mut self, config: &QuotaConfig, value: f64, now_ms: u64) {
        self.last_used_ms = now_ms;
        let n = self.samples.len();
        if now_ms >= self.samples[self.current].0 + config.window_ms {
            self.current = (self.current + 1) % n;
            self.samples[self.current] = (now_ms, 0.0);
        }
        self.samples[self.current].1 += value;
    }

    /// The rate (per second) and the window it is measured over (ms).
    fn measure(&mut self, config: &QuotaConfig, now_ms: u64) -> (f64, u64) {
        let n = self.samples.len() as u64;
        let expire = n * config.window_ms;
        for s in &mut self.samples {
            if now_ms.saturating_sub(s.0) >= expire {
                *s = (now_ms, 0.0);
            }
        }
        let total: f64 = self.samples.iter().map(|s| s.1).sum();
        let oldest = self.samples.iter().map(|s| s.0).min().unwrap_or(now_ms);
        let mut elapsed = now_ms.saturating_sub(oldest);
        let full = elapsed / config.window_ms;
        if full < n - 1 {
            elapsed += (n - 1 - full) * config.window_ms;
        }
        (total / (elapsed as f64 / 1000.0), elapsed)
    }
}

/// The node's client quotas: the table in force and the rates measured against it.
pub struct Quotas {
    config: QuotaConfig,
    table: Mutex<Arc<QuotaTable>>,
    sensors: Mutex<Sensors>,
    /// Keys the sensor hashes (randomly per process, so clients cannot aim collisions).
    hasher: std::collections::hash_map::RandomState,
}

/// The rates measured, by quota type and the hash of whose rate it is.
#[derive(Default)]
struct Sensors {
    rates: HashMap<(QuotaType, u64), Rate>,
    /// When idle sensors were last dropped (ms).
    swept_ms: u64,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Quotas {
        Quotas {
            config,
            table: Mutex::new(Arc::new(QuotaTable::default_empty())),
            sensors: Mutex::new(Sensors::default()),
            hasher: Default::default(),
        }
    }

    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Puts a new table in force (a quota change reached this node). Rates measured so far
    /// carry over to the new bounds, as Kafka's sensors do.
    pub fn set_table(&self, table: QuotaTable) {
        if table.is_empty() {
            // Nothing is measured any more: what was is of no use.
            self.sensors.lock().rates.clear();
        }
        *self.table.lock() = Arc::new(table);
    }

    pub fn table(&self) -> Arc<QuotaTable> {
        self.table.lock().clone()
    }

    /// Records `value` for this user and client id and returns how long (ms) the client is
    /// throttled for, 0 when it is within its quota or has none.
    pub fn record(
        &self,
        kind: QuotaType,
        user: &str,
        client_id: &str,
        value: f64,
        now_ms: u64,
    ) -> u64 {
        let table = self.table();
        let Some((bound, key)) = table.resolve(kind, user, client_id) else {
            return 0;
        };
        let id = (kind, self.hasher.hash_one(&key));
        let mut sensors = self.sensors.lock();
        let rate = self.sensor(&mut sensors, id, now_ms);
        rate.record(&self.config, value, now_ms);
        let (observed, window_ms) = rate.measure(&self.config, now_ms);
        if !(observed > bound && bound > 0.0) {
            return 0;
        }
        // Finite and positive here; `as` saturates whatever the magnitude.
        let throttle = ((observed - bound) / bound * window_ms as f64).round() as u64;
        throttle.min(match kind {
            // Kafka's request quota caps a throttle at one sample window.
            QuotaType::Request => self.config.window_ms,
            // Shale's cap (see the module docs): the whole window.
            _ => self.config.window_ms * u64::from(self.config.samples),
        })
    }

    /// Takes back a recorded value (a throttled fetch returns no records, so its bytes do
    /// not count).
    pub fn unrecord(&self, kind: QuotaType, user: &str, client_id: &str, value: f64, now_ms: u64) {
        let table = self.table();
        let Some((_, key)) = table.resolve(kind, user, client_id) else {
            return;
        };
        let id = (kind, self.hasher.hash_one(&key));
        if let Some(rate) = self.sensors.lock().rates.get_mut(&id) {
            rate.record(&self.config, -value, now_ms);
        }
    }

    /// The largest value one request can record without being throttled for certain
    /// (Kafka's `maxValueInQuotaWindow`): bounds a fetch's size. `None`: no quota.
    pub fn max_value_in_window(&self, kind: QuotaType, user: &str, client_id: &str) -> Option<f64> {
        let table = self.table();
        let (bound, _) = table.resolve(kind, user, client_id)?;
        let windows = f64::from(self.config.samples.saturating_sub(1).max(1));
        Some(bound * windows * self.config.window_ms as f64 / 1000.0)
    }

    /// Sensors in use (for tests and the metrics).
    pub fn sensor_count(&self) -> usize {
        self.sensors.lock().rates.len()
    }

    fn sensor<'a>(
        &self,
        sensors: &'a mut Sensors,
        id: (QuotaType, u64),
        now_ms: u64,
    ) -> &'a mut Rate {
        if !sensors.rates.contains_key(&id) && sensors.rates.len() >= self.config.max_sensors {
            // Idle for a whole window: a rate of zero, the same as a new sensor. Swept at most
            // once a window, so a full map costs no scan per new client.
            let idle = self.config.window_ms * u64::from(self.config.samples);
            if now_ms.saturating_sub(sensors.swept_ms) >= self.config.window_ms {
                sensors.swept_ms = now_ms;
                sensors
                    .rates
                    .retain(|_, r| now_ms.saturating_sub(r.last_used_ms) < idle);
            }
            if sensors.rates.len() >= self.config.max_sensors
                && let Some(any) = sensors.rates.keys().next().copied()
            {
                // Every sensor is busy: one of them starts over (its client is measured
                // afresh), rather than memory growing.
                sensors.rates.remove(&any);
            }
        }
        sensors
            .rates
            .entry(id)
            .or_insert_with(|| Rate::new(&self.config, now_ms))
    }
}

impl QuotaTable {
    fn default_empty() -> QuotaTable {
        QuotaTable {
            empty: true,
            ..QuotaTable::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(
        entries: &[(EntityPart<'static>, EntityPart<'static>, &'static str, f64)],
    ) -> QuotaTable {
        QuotaTable::new(entries.iter().map(|&(u, c, k, v)| (u, c, vec![(k, v)])))
    }

    #[test]
    fn the_most_specific_entity_wins_in_kafkas_order() {
        let p = QuotaType::Produce;
        let levels: [(EntityPart, EntityPart, f64); 8] = [
            (Some(Some("alice")), Some(Some("app")), 1.0),
            (Some(Some("alice")), Some(None), 2.0),
            (Some(Some("alice")), None, 3.0),
            (Some(None), Some(Some("app")), 4.0),
            (Some(None), Some(None), 5.0),
            (Some(None), None, 6.0),
            (None, Some(Some("app")), 7.0),
            (None, Some(None), 8.0),
        ];
        // With levels i.. configured, level i decides.
        for i in 0..levels.len() {
            let t = QuotaTable::new(
                levels[i..]
                    .iter()
                    .map(|&(u, c, v)| (u, c, vec![("producer_byte_rate", v)])),
            );
            let (bound, _) = t.resolve(p, "alice", "app").unwrap();
            assert_eq!(bound, (i + 1) as f64, "level {}", i + 1);
        }
    }

    #[test]
    fn who_shares_a_rate_follows_the_matching_entity() {
        let key = |u: &str, c: &str| SensorKey {
            user: u.into(),
            client_id: c.into(),
        };
        let p = QuotaType::Produce;
        let k = "producer_byte_rate";
        // A user quota: one rate over all the user's client ids.
        let t = table(&[(Some(Some("alice")), None, k, 10.0)]);
        assert_eq!(t.resolve(p, "alice", "a").unwrap().1, key("alice", ""));
        assert_eq!(t.resolve(p, "bob", "a"), None);
        // The default user: one rate per user.
        let t = table(&[(Some(None), None, k, 10.0)]);
        assert_eq!(t.resolve(p, "bob", "x").unwrap().1, key("bob", ""));
        // A client-id quota: one rate per client id, over all users.
        let t = table(&[(None, Some(Some("app")), k, 10.0)]);
        assert_eq!(t.resolve(p, "bob", "app").unwrap().1, key("", "app"));
        assert_eq!(t.resolve(p, "bob", "other"), None);
        // (user, default client): per user and client id.
        let t = table(&[(Some(Some("alice")), Some(None), k, 10.0)]);
        assert_eq!(t.resolve(p, "alice", "z").unwrap().1, key("alice", "z"));
    }

    #[test]
    fn each_quota_type_resolves_on_its_own() {
        let t = QuotaTable::new([(
            Some(Some("alice")),
            None,
            vec![("consumer_byte_rate", 5.0), ("unknown_key", 1.0)],
        )]);
        assert!(t.resolve(QuotaType::Produce, "alice", "c").is_none());
        assert_eq!(t.resolve(QuotaType::Fetch, "alice", "c").unwrap().0, 5.0);
        assert!(QuotaTable::new(Vec::new()).is_empty());
        assert!(!t.is_empty());
    }

    fn quotas(bound_key: &'static str, bound: f64) -> Quotas {
        let q = Quotas::new(QuotaConfig::default());
        q.set_table(table(&[(Some(Some("alice")), None, bound_key, bound)]));
        q
    }

    #[test]
    fn within_the_quota_nothing_is_throttled() {
        let q = quotas("producer_byte_rate", 1000.0);
        // 100 bytes every 200 ms: 500 B/s.
        for i in 0..100 {
            assert_eq!(
                q.record(QuotaType::Produce, "alice", "c", 100.0, i * 200),
                0
            );
        }
        // Others have no quota at all.
        assert_eq!(q.record(QuotaType::Produce, "bob", "c", 1e9, 0), 0);
    }

    #[test]
    fn a_burst_is_throttled_until_the_rate_is_back_at_the_bound() {
        let q = quotas("producer_byte_rate", 1000.0);
        // 20 000 bytes at once on a new sensor: measured over the 10 s minimum window,
        // 2000 B/s, twice the bound: throttled for (2000 - 1000) / 1000 * 10 s.
        let t = q.record(QuotaType::Produce, "alice", "c", 20_000.0, 0);
        assert_eq!(t, 10_000);
        // Once the burst's sample has left the window, a little is within the quota.
        assert_eq!(q.record(QuotaType::Produce, "alice", "c", 1.0, 11_000), 0);
    }

    #[test]
    fn a_sustained_overload_is_throttled_in_proportion() {
        let q = quotas("producer_byte_rate", 1000.0);
        let mut last = 0;
        // 1500 B/s for 30 s, never waiting out a throttle.
        for i in 0..150 {
            last = q.record(QuotaType::Produce, "alice", "c", 300.0, i * 200);
        }
        // 11 samples of 1 s hold 10.8 s at ~1500 B/s: (1528 - 1000) / 1000 * 10.8 s.
        assert!((5_000..=6_500).contains(&last), "{last}");
    }

    #[test]
    fn request_throttles_are_capped_at_one_window() {
        let q = quotas("request_percentage", 10.0);
        assert_eq!(q.record(QuotaType::Request, "alice", "c", 5000.0, 0), 1000);
    }

    #[test]
    fn byte_rate_throttles_are_capped_at_the_whole_window() {
        let q = quotas("producer_byte_rate", 1.0);
        assert_eq!(q.record(QuotaType::Produce, "alice", "c", 1e12, 0), 11_000);
        assert_eq!(
            q.record(QuotaType::Produce, "alice", "c", f64::INFINITY, 1),
            11_000
        );
    }

    #[test]
    fn removing_every_quota_forgets_the_rates() {
        let q = quotas("producer_byte_rate", 1000.0);
        q.record(QuotaType::Produce, "alice", "c", 1.0, 0);
        assert_eq!(q.sensor_count(), 1);
        q.set_table(QuotaTable::new(Vec::new()));
        assert_eq!(q.sensor_count(), 0);
    }

    #[test]
    fn unrecording_gives_back_the_budget() {
        let q = quotas("consumer_byte_rate", 1000.0);
        assert!(q.record(QuotaType::Fetch, "alice", "c", 20_000.0, 0) > 0);
        q.unrecord(QuotaType::Fetch, "alice", "c", 20_000.0, 0);
        assert_eq!(q.record(QuotaType::Fetch, "alice", "c", 100.0, 1), 0);
        // A fetch may ask for what ten windows allow.
        assert_eq!(
            q.max_value_in_window(QuotaType::Fetch, "alice", "c"),
            Some(10_000.0)
        );
        assert_eq!(q.max_value_in_window(QuotaType::Fetch, "bob", "c"), None);
    }

    #[test]
    fn sensors_are_bounded_whatever_client_ids_clients_send() {
        let q = Quotas::new(QuotaConfig {
            max_sensors: 8,
            ..QuotaConfig::default()
        });
        q.set_table(table(&[(
            Some(None),
            Some(None),
            "producer_byte_rate",
            1e6,
        )]));
        for i in 0..1000u64 {
            q.record(QuotaType::Produce, "u", &format!("client-{i}"), 1.0, i);
        }
        assert!(q.sensor_count() <= 8);
    }

    #[test]
    fn idle_samples_expire() {
        let q = quotas("producer_byte_rate", 1000.0);
        assert!(q.record(QuotaType::Produce, "alice", "c", 20_000.0, 0) > 0);
        // 11 windows later the burst is forgotten.
        assert_eq!(q.record(QuotaType::Produce, "alice", "c", 100.0, 11_000), 0);
    }
}

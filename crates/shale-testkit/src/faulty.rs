//! [`FaultyStore`]: an [`ObjectStore`] wrapper that injects the faults a real bucket shows —
//! errors, S3 `503 SlowDown` throttling, latency and *ambiguous outcomes* (the write is
//! applied, the caller gets an error, as when a response is lost) — per operation kind and
//! key prefix, either scheduled ("the next 3 PUTs", "outage until switched off") or with a
//! seeded probability, and counts what it injected.
//!
//! ```
//! use shale_testkit::faulty::{FaultyStore, Fault, Op, Rule};
//! let bucket = FaultyStore::in_memory(42);
//! // The next two WAL PUTs land in the bucket but report an error.
//! bucket.inject(Rule::new(Fault::Ambiguous).op(Op::Put).prefix("wal/").times(2));
//! // A full outage of every operation, until switched off.
//! bucket.set_outage(true);
//! bucket.set_outage(false);
//! ```

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Kind of object-store operation a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put_opts` and the start of `put_multipart_opts`.
    Put,
    /// A whole-object GET.
    Get,
    /// A ranged GET (`get_range`, `get_ranges`, `get_opts` with a range).
    GetRange,
    /// A HEAD (`get_opts` with `head`).
    Head,
    /// `list`, `list_with_offset`, `list_with_delimiter` (matched on the listed prefix).
    List,
    /// One key of `delete_stream` (so `delete` too).
    Delete,
    /// `copy_opts` and `rename_opts` (matched on the destination).
    Copy,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::Head,
        Op::List,
        Op::Delete,
        Op::Copy,
    ];
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Fails before anything is applied (`object_store::Error::Generic`).
    Error,
    /// Fails before anything is applied with the error the S3 client surfaces once its own
    /// retries on `503 SlowDown` are exhausted.
    SlowDown,
    /// Delays the operation, then performs it. Latency rules add up and do not stop an error
    /// rule from also firing.
    Latency(Duration),
    /// Performs the operation, then reports an error anyway (a lost response). For reads this
    /// is just an error.
    Ambiguous,
}

/// The kinds of [`Fault`], for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    Error,
    SlowDown,
    Latency,
    Ambiguous,
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Error => FaultKind::Error,
            Fault::SlowDown => FaultKind::SlowDown,
            Fault::Latency(_) => FaultKind::Latency,
            Fault::Ambiguous => FaultKind::Ambiguous,
        }
    }
}

/// When a matching rule fires.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    /// On every matching call until the rule is removed.
    Always,
    /// On the next `n` matching calls, then the rule retires.
    Times(u64),
    /// On each matching call with this probability (drawn from the store's seeded generator).
    Probability(f64),
}

/// One fault-injection rule: a fault, the calls it matches and when it fires.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    ops: Option<Vec<Op>>,
    prefix: Option<String>,
    trigger: Trigger,
}

impl Rule {
    /// A rule firing on every call of every operation (narrow it with the builders).
    pub fn new(fault: Fault) -> Rule {
        Rule {
            fault,
            ops: None,
            prefix: None,
            trigger: Trigger::Always,
        }
    }
    /// Only calls of this operation kind (may be given several times).
    pub fn op(mut self, op: Op) -> Rule {
        self.ops.get_or_insert_with(Vec::new).push(op);
        self
    }
    /// Only keys starting with `prefix` (the path as a string, without a leading slash).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Rule {
        self.prefix = Some(prefix.into());
        self
    }
    /// Fires on the next `n` matching calls only.
    pub fn times(mut self, n: u64) -> Rule {
        self.trigger = Trigger::Times(n);
        self
    }
    /// Fires on each matching call with probability `p` (clamped to [0, 1]).
    pub fn probability(mut self, p: f64) -> Rule {
        self.trigger = Trigger::Probability(p.clamp(0.0, 1.0));
        self
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| key.starts_with(p.as_str()))
    }
}

/// Handle of an injected rule, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

struct Rules {
    next_id: u64,
    rules: Vec<(RuleId, Rule)>,
    /// splitmix64 state: a seeded run injects the same faults in the same call order.
    rng: u64,
}

impl Rules {
    fn next_f64(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The decision for one call: total added latency and the failing fault, if any.
#[derive(Debug, Default, Clone, Copy)]
struct Decision {
    delay: Duration,
    fail: Option<Fault>,
}

struct State {
    rules: Mutex<Rules>,
    outage: AtomicBool,
    calls: HashMap<Op, AtomicU64>,
    injected: HashMap<(Op, FaultKind), AtomicU64>,
}

impl State {
    fn rules(&self) -> MutexGuard<'_, Rules> {
        // A panic while holding the lock leaves the rules consistent (no multi-step updates).
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, op: Op, kind: FaultKind) {
        if let Some(c) = self.injected.get(&(op, kind)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn decide(&self, op: Op, key: &str) -> Decision {
        if let Some(c) = self.calls.get(&op) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut d = Decision::default();
        if self.outage.load(Ordering::Acquire) {
            d.fail = Some(Fault::SlowDown);
            self.count(op, FaultKind::SlowDown);
            return d;
        }
        let mut rules = self.rules();
        let mut i = 0;
        while i < rules.rules.len() {
            let (fires, retire) = {
                let trigger = rules.rules[i].1.trigger;
                if !rules.rules[i].1.matches(op, key) {
                    (false, false)
                } else {
                    match trigger {
                        Trigger::Always => (true, false),
                        Trigger::Times(n) => (n > 0, n <= 1),
                        Trigger::Probability(p) => (rules.next_f64() < p, false),
                    }
                }
            };
            let fault = rules.rules[i].1.fault;
            // An error rule that cannot fire because an earlier one already failed the call
            // is not consumed.
            let usable = fires && (matches!(fault, Fault::Latency(_)) || d.fail.is_none());
            if usable {
                match fault {
                    Fault::Latency(l) => d.delay += l,
                    f => d.fail = Some(f),
                }
                self.count(op, fault.kind());
                if let Trigger::Times(n) = &mut rules.rules[i].1.trigger {
                    *n = n.saturating_sub(1);
                }
            }
            if usable && retire {
                rules.rules.remove(i);
            } else {
                i += 1;
            }
        }
        d
    }
}

fn injected_error(fault: Fault, op: Op, key: &str) -> object_store::Error {
    let msg = match fault {
        Fault::SlowDown => format!(
            "{op:?} {key}: Server returned non-2xx status code: 503 Service Unavailable: \
             <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error> \
             (injected)"
        ),
        Fault::Ambiguous => format!(
            "{op:?} {key}: error sending request: connection reset after the request was sent \
             (injected ambiguous outcome)"
        ),
        _ => format!("{op:?} {key}: injected failure"),
    };
    object_store::Error::Generic {
        store: "FaultyStore",
        source: msg.into(),
    }
}

/// A bucket wrapper injecting faults (see the module docs). Cheap to share as `Arc`.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    /// Wraps `inner`; `seed` drives every probabilistic rule.
    pub fn new(inner: Arc<dyn ObjectStore>, seed: u64) -> Arc<FaultyStore> {
        let calls = Op::ALL.iter().map(|&o| (o, AtomicU64::new(0))).collect();
        let kinds = [
            FaultKind::Error,
            FaultKind::SlowDown,
            FaultKind::Latency,
            FaultKind::Ambiguous,
        ];
        let injected = Op::ALL
            .iter()
            .flat_map(|&o| kinds.iter().map(move |&k| ((o, k), AtomicU64::new(0))))
            .collect();
        Arc::new(FaultyStore {
            inner,
            state: Arc::new(State {
                rules: Mutex::new(Rules {
                    next_id: 1,
                    rules: Vec::new(),
                    rng: seed,
                }),
                outage: AtomicBool::new(false),
                calls,
                injected,
            }),
        })
    }

    /// Wraps a fresh in-memory bucket.
    pub fn in_memory(seed: u64) -> Arc<FaultyStore> {
        Self::new(Arc::new(InMemory::new()), seed)
    }

    /// The wrapped store: reads and writes through it bypass every fault.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Adds a rule; rules are evaluated in the order they were added.
    pub fn inject(&self, rule: Rule) -> RuleId {
        let mut r = self.state.rules();
        let id = RuleId(r.next_id);
        r.next_id += 1;
        r.rules.push((id, rule));
        id
    }

    /// Removes a rule (no-op when it already retired).
    pub fn remove(&self, id: RuleId) {
        self.state.rules().rules.retain(|(i, _)| *i != id);
    }

    /// Removes every rule and ends an outage.
    pub fn clear(&self) {
        self.state.rules().rules.clear();
        self.set_outage(false);
    }

    /// While on, every operation fails with `503 SlowDown` before reaching the bucket (rules
    /// are not consulted).
    pub fn set_outage(&self, on: bool) {
        self.state.outage.store(on, Ordering::Release);
    }

    /// Rules still active (scheduled ones retire once spent).
    pub fn active_rules(&self) -> usize {
        self.state.rules().rules.len()
    }

    /// Calls of `op` seen (faulted or not).
    pub fn calls(&self, op: Op) -> u64 {
        self.state
            .calls
            .get(&op)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Faults of `kind` injected into calls of `op`.
    pub fn injected_on(&self, op: Op, kind: FaultKind) -> u64 {
        self.state
            .injected
            .get(&(op, kind))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Faults of `kind` injected into any operation.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        Op::ALL.iter().map(|&o| self.injected_on(o, kind)).sum()
    }

    /// Keys under `prefix`, sorted, listed from the wrapped store (no faults).
    pub async fn keys(&self, prefix: &str) -> object_store::Result<Vec<String>> {
        let p = Path::from(prefix);
        let mut keys = self
            .inner
            .list(Some(&p))
            .map(|m| m.map(|m| m.location.to_string()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort();
        Ok(keys)
    }

    async fn before(&self, op: Op, key: &str) -> Decision {
        let d = self.state.decide(op, key);
        if !d.delay.is_zero() {
            tokio::time::sleep(d.delay).await;
        }
        d
    }
}

/// Applies a decision around an operation: fail before, or run and fail after.
async fn run<T>(
    d: Decision,
    op: Op,
    key: &str,
    f: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    match d.fail {
        Some(Fault::Ambiguous) => {
            // The outcome is applied (or fails on its own); either way the caller sees an error.
            let _ = f.await;
            Err(injected_error(Fault::Ambiguous, op, key))
        }
        Some(fault) => Err(injected_error(fault, op, key)),
        None => f.await,
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let key = location.as_ref();
        let d = self.before(Op::Put, key).await;
        run(
            d,
            Op::Put,
            key,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let key = location.as_ref();
        let d = self.before(Op::Put, key).await;
        // Starting an upload applies nothing visible, so an ambiguous start is just an error.
        match d.fail {
            Some(f) => Err(injected_error(f, Op::Put, key)),
            None => self.inner.put_multipart_opts(location, opts).await,
        }
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head {
            Op::Head
        } else if options.range.is_some() {
            Op::GetRange
        } else {
            Op::Get
        };
        let key = location.as_ref();
        let d = self.before(op, key).await;
        run(d, op, key, self.inner.get_opts(location, options)).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        let key = location.as_ref();
        let d = self.before(Op::GetRange, key).await;
        run(
            d,
            Op::GetRange,
            key,
            self.inner.get_ranges(location, ranges),
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        let state = self.state.clone();
        locations
            .then(move |loc| {
                let inner = inner.clone();
                let state = state.clone();
                async move {
                    let path = loc?;
                    let key = path.to_string();
                    let d = state.decide(Op::Delete, &key);
                    if !d.delay.is_zero() {
                        tokio::time::sleep(d.delay).await;
                    }
                    run(d, Op::Delete, &key, inner.delete(&path)).await?;
                    Ok(path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let d = self.state.decide(Op::List, &key);
        let listing = self.inner.list(prefix);
        delayed_list(d, key, listing)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let d = self.state.decide(Op::List, &key);
        let listing = self.inner.list_with_offset(prefix, offset);
        delayed_list(d, key, listing)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let d = self.before(Op::List, &key).await;
        run(d, Op::List, &key, self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let key = to.as_ref();
        let d = self.before(Op::Copy, key).await;
        run(d, Op::Copy, key, self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let key = to.as_ref();
        let d = self.before(Op::Copy, key).await;
        run(d, Op::Copy, key, self.inner.rename_opts(from, to, options)).await
    }
}

/// A listing that first waits out the injected latency, then fails or streams.
fn delayed_list(
    d: Decision,
    key: String,
    listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    let wait = async move {
        if !d.delay.is_zero() {
            tokio::time::sleep(d.delay).await;
        }
        match d.fail {
            // A listing changes nothing, so an ambiguous listing is just an error.
            Some(f) => {
                futures::stream::once(async move { Err(injected_error(f, Op::List, &key)) }).boxed()
            }
            None => listing,
        }
    };
    wait.into_stream().flatten().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutMode;

    fn store() -> Arc<FaultyStore> {
        FaultyStore::in_memory(7)
    }

    async fn put(s: &FaultyStore, key: &str) -> object_store::Result<PutResult> {
        s.put(&Path::from(key), PutPayload::from_static(b"x")).await
    }

    async fn exists(s: &FaultyStore, key: &str) -> bool {
        s.inner().head(&Path::from(key)).await.is_ok()
    }

    #[tokio::test]
    async fn without_rules_every_call_reaches_the_bucket() {
        let s = store();
        put(&s, "a").await.unwrap();
        assert!(s.get(&Path::from("a")).await.is_ok());
        assert_eq!(s.calls(Op::Put), 1);
        assert_eq!(s.calls(Op::Get), 1);
        assert_eq!(s.injected(FaultKind::Error), 0);
    }

    #[tokio::test]
    async fn a_scheduled_error_fails_the_next_n_calls_then_retires() {
        let s = store();
        s.inject(Rule::new(Fault::Error).op(Op::Put).times(2));
        assert!(put(&s, "a").await.is_err());
        assert!(put(&s, "a").await.is_err());
        assert!(!exists(&s, "a").await);
        assert!(put(&s, "a").await.is_ok());
        assert_eq!(s.injected_on(Op::Put, FaultKind::Error), 2);
        assert_eq!(s.active_rules(), 0);
    }

    #[tokio::test]
    async fn an_ambiguous_put_is_applied_but_reported_as_failed() {
        let s = store();
        s.inject(Rule::new(Fault::Ambiguous).op(Op::Put).times(1));
        assert!(put(&s, "a").await.is_err());
        assert!(exists(&s, "a").await);
        assert_eq!(s.injected(FaultKind::Ambiguous), 1);
    }

    #[tokio::test]
    async fn an_ambiguous_create_retry_sees_its_own_object_as_already_existing() {
        let s = store();
        s.inject(Rule::new(Fault::Ambiguous).op(Op::Put).times(1));
        let opts = || PutOptions::from(PutMode::Create);
        let p = Path::from("k");
        assert!(s.put_opts(&p, "x".into(), opts()).await.is_err());
        let retry = s.put_opts(&p, "x".into(), opts()).await;
        assert!(matches!(
            retry,
            Err(object_store::Error::AlreadyExists { .. })
        ));
    }

    #[tokio::test]
    async fn a_prefix_limits_a_rule_to_matching_keys() {
        let s = store();
        s.inject(Rule::new(Fault::Error).prefix("wal/"));
        assert!(put(&s, "wal/1").await.is_err());
        assert!(put(&s, "obj/1").await.is_ok());
    }

    #[tokio::test]
    async fn an_outage_fails_every_operation_with_slowdown_until_switched_off() {
        let s = store();
        put(&s, "a").await.unwrap();
        s.set_outage(true);
        let err = s.get(&Path::from("a")).await.unwrap_err().to_string();
        assert!(err.contains("SlowDown"), "{err}");
        assert!(s.delete(&Path::from("a")).await.is_err());
        assert!(s.list(None).next().await.is_some_and(|r| r.is_err()));
        assert!(exists(&s, "a").await);
        s.set_outage(false);
        assert!(s.get(&Path::from("a")).await.is_ok());
        assert_eq!(s.injected(FaultKind::SlowDown), 3);
    }

    #[tokio::test]
    async fn latency_delays_the_call_and_still_performs_it() {
        let s = store();
        s.inject(Rule::new(Fault::Latency(Duration::from_millis(50))).op(Op::Put));
        let t = std::time::Instant::now();
        put(&s, "a").await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(exists(&s, "a").await);
        assert_eq!(s.injected(FaultKind::Latency), 1);
    }

    #[tokio::test]
    async fn head_range_and_whole_gets_are_told_apart() {
        let s = store();
        put(&s, "a").await.unwrap();
        s.inject(Rule::new(Fault::Error).op(Op::GetRange));
        assert!(s.head(&Path::from("a")).await.is_ok());
        assert!(s.get(&Path::from("a")).await.is_ok());
        assert!(s.get_range(&Path::from("a"), 0..1).await.is_err());
        assert_eq!(s.calls(Op::Head), 1);
    }

    #[tokio::test]
    async fn the_same_seed_injects_the_same_probabilistic_faults() {
        async fn pattern(seed: u64) -> Vec<bool> {
            let s = FaultyStore::in_memory(seed);
            s.inject(Rule::new(Fault::Error).probability(0.5));
            let mut v = Vec::new();
            for i in 0..64 {
                v.push(put(&s, &format!("k{i}")).await.is_err());
            }
            v
        }
        let a = pattern(3).await;
        assert_eq!(a, pattern(3).await);
        let failed = a.iter().filter(|x| **x).count();
        assert!((10..54).contains(&failed), "{failed} of 64 failed");
    }

    #[tokio::test]
    async fn a_removed_rule_no_longer_fires() {
        let s = store();
        let id = s.inject(Rule::new(Fault::Error));
        assert!(put(&s, "a").await.is_err());
        s.remove(id);
        assert!(put(&s, "a").await.is_ok());
    }

    #[tokio::test]
    async fn an_ambiguous_delete_removes_the_object_and_reports_an_error() {
        let s = store();
        put(&s, "a").await.unwrap();
        s.inject(Rule::new(Fault::Ambiguous).op(Op::Delete).times(1));
        assert!(s.delete(&Path::from("a")).await.is_err());
        assert!(!exists(&s, "a").await);
    }
}

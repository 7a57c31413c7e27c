//! The block cache: decoded data blocks of objects, keyed by (object id, position), LRU by
//! bytes. Misses are fetched with one ranged GET of exactly the block; concurrent misses for
//! the same block (a reader and its read-ahead) share one fetch.

use crate::object;
use crate::util::dup_error;
use crate::{ObjectId, RangeLocation, StreamError, StreamRecord};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Key = (ObjectId, u64);
type Fetch = Shared<BoxFuture<'static, Result<Arc<Block>, Arc<StreamError>>>>;

/// A decoded block; payloads are slices of the fetched bytes (`size` of them).
pub(crate) struct Block {
    pub records: Vec<StreamRecord>,
    pub size: usize,
}

struct Lru {
    map: HashMap<Key, (Arc<Block>, u64)>,
    /// Use tick -> key; the smallest tick is the least recently used.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

pub(crate) struct BlockCache {
    capacity: usize,
    lru: Mutex<Lru>,
    inflight: Mutex<HashMap<Key, Fetch>>,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            lru: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// (bytes, blocks) held.
    pub fn usage(&self) -> (usize, usize) {
        let l = self.lru.lock();
        (l.bytes, l.map.len())
    }

    /// Block fetches in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.lock().len()
    }

    pub fn contains(&self, object_id: ObjectId, position: u64) -> bool {
        self.lru.lock().map.contains_key(&(object_id, position))
    }

    fn lookup(&self, key: &Key) -> Option<Arc<Block>> {
        let mut l = self.lru.lock();
        l.tick += 1;
        let tick = l.tick;
        let (block, old) = {
            let slot = l.map.get_mut(key)?;
            let old = std::mem::replace(&mut slot.1, tick);
            (slot.0.clone(), old)
        };
        l.order.remove(&old);
        l.order.insert(tick, *key);
        Some(block)
    }

    fn insert(&self, key: Key, block: Arc<Block>) {
        // A block larger than the whole cache would only evict everything else.
        if block.size > self.capacity {
            return;
        }
        let mut l = self.lru.lock();
        l.tick += 1;
        let tick = l.tick;
        let size = block.size;
        if let Some((old, old_tick)) = l.map.insert(key, (block, tick)) {
            l.order.remove(&old_tick);
            l.bytes -= old.size;
        }
        l.order.insert(tick, key);
        l.bytes += size;
        while l.bytes > self.capacity {
            let Some((_, k)) = l.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = l.map.remove(&k) {
                l.bytes -= b.size;
            }
        }
    }

    /// Returns the block of `loc`, from the cache or fetched (and then cached).
    pub async fn get(
        self: &Arc<Self>,
        store: &Arc<dyn ObjectStore>,
        loc: &RangeLocation,
    ) -> Result<Arc<Block>, StreamError> {
        let key = (loc.object_id, loc.range.position);
        if let Some(b) = self.lookup(&key) {
            metrics::counter!("shale_block_cache_hits_total").increment(1);
            return Ok(b);
        }
        metrics::counter!("shale_block_cache_misses_total").increment(1);
        self.fetch(store, loc).await.map_err(|e| dup_error(&e))
    }

    /// Starts fetching `loc` in the background unless it is cached or already being fetched.
    pub fn prefetch(self: &Arc<Self>, store: &Arc<dyn ObjectStore>, loc: &RangeLocation) {
        if self.contains(loc.object_id, loc.range.position) {
            return;
        }
        // The fetch runs as its own task; dropping the handle does not cancel it.
        drop(self.fetch(store, loc));
    }

    fn fetch(self: &Arc<Self>, store: &Arc<dyn ObjectStore>, loc: &RangeLocation) -> Fetch {
        let key = (loc.object_id, loc.range.position);
        let mut inflight = self.inflight.lock();
        if let Some(f) = inflight.get(&key) {
            return f.clone();
        }
        // Spawned so the fetch completes (and is cached) even if every waiter goes away.
        let cache = self.clone();
        let store = store.clone();
        let loc = loc.clone();
        let task = tokio::spawn(async move {
            let res = fetch_block(&store, &loc).await.map(Arc::new);
            if let Ok(b) = &res {
                cache.insert(key, b.clone());
            }
            // Cached first, then no longer in flight: a new reader finds one or the other.
            cache.inflight.lock().remove(&key);
            res.map_err(Arc::new)
        });
        let fut: Fetch = async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Arc::new(StreamError::ObjectStore(format!(
                    "block fetch task failed: {e}"
                )))),
            }
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        fut
    }
}

/// One ranged GET of exactly the block, verified and decoded.
async fn fetch_block(
    store: &Arc<dyn ObjectStore>,
    loc: &RangeLocation,
) -> Result<Block, StreamError> {
    let r = &loc.range;
    let end = r
        .position
        .checked_add(u64::from(r.length))
        .ok_or_else(|| StreamError::Corrupt {
            key: loc.object_key.clone(),
            reason: format!("range position {} overflows", r.position),
        })?;
    if r.length == 0 {
        // A range compacted down to no entries: nothing to GET (and an empty ranged GET is
        // invalid); still verified against the catalog's crc and offsets.
        let records =
            object::decode_block(bytes::Bytes::new(), r).map_err(|e| e.at(&loc.object_key))?;
        return Ok(Block { records, size: 0 });
    }
    let path = Path::from(loc.object_key.as_str());
    let data = store.get_range(&path, r.position..end).await.map_err(|e| {
        StreamError::ObjectStore(format!(
            "GET {} [{}..{end}): {e}",
            loc.object_key, r.position
        ))
    })?;
    let size = data.len();
    let records = object::decode_block(data, r).map_err(|e| e.at(&loc.object_key))?;
    Ok(Block { records, size })
}

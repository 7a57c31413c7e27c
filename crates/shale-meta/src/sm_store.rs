//! The openraft state machine: an in-memory [`MetaState`] shared with local readers, and
//! persistent snapshots.
//!
//! The state machine itself is not persisted on apply; the snapshot file plus the log are the
//! durable form. On restart openraft installs the last snapshot and re-applies the log after it
//! once the leader (with one voter: this node) has re-established the commit index.
//!
//! Snapshot file (`snapshot.bin`, replaced atomically):
//! `MAGIC | meta_len (LE u32) | json(meta) | data_len (LE u64) | data | crc32c (LE u32)`,
//! the crc covering everything before it; `data` is the versioned encoding of
//! [`ClusterState`] in [`crate::snapshot_format`] (protobuf; older files hold JSON there).
//!
//! Taking a snapshot holds the state lock only for an O(1) copy of the state (its maps are
//! persistent, see [`crate::StateMap`]); encoding and writing run on a blocking thread while
//! applies go on.

use crate::ClusterState;
use crate::fsutil::{invalid_data, write_atomic};
use crate::snapshot_format;
use crate::state::MetaState;
use crate::types::{
    Command, LogId, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::{Mutex, RwLock};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

const SNAPSHOT_FILE: &str = "snapshot.bin";
const MAGIC: &[u8; 8] = b"SHALESN1";
const MAX_META: usize = 16 << 20;

/// Everything the state machine holds, under one lock so snapshots are consistent.
#[derive(Debug, Default)]
pub(crate) struct SmData {
    pub meta: MetaState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// State shared between the state machine (writer) and local readers.
pub(crate) struct Shared {
    pub data: RwLock<SmData>,
    /// Bumped after every applied entry and snapshot install.
    pub changes: watch::Sender<u64>,
    /// Wakes the leader's controller when a broker was fenced or registered, so the moves
    /// that follow are planned at once rather than at its next tick.
    pub controller_wake: tokio::sync::Notify,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        let (changes, _) = watch::channel(0);
        Arc::new(Shared {
            data: RwLock::new(SmData::default()),
            changes,
            controller_wake: tokio::sync::Notify::new(),
        })
    }

    fn bump(&self) {
        // send_modify also updates when no receiver exists (send() would not).
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The snapshot file of a node.
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Meta of the snapshot on disk, if any.
    current: Mutex<Option<SnapshotMeta>>,
    /// Serializes file writes (builds run on their own task, installs on the state machine's).
    write_lock: Mutex<()>,
}

impl SnapshotFiles {
    fn open(dir: &Path) -> io::Result<SnapshotFiles> {
        fs::create_dir_all(dir)?;
        let files = SnapshotFiles {
            dir: dir.to_path_buf(),
            current: Mutex::new(None),
            write_lock: Mutex::new(()),
        };
        // Only the header here; the whole file is verified when openraft loads it at startup.
        *files.current.lock() = files.read_meta()?;
        Ok(files)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    fn read_meta(&self) -> io::Result<Option<SnapshotMeta>> {
        let mut f = match fs::File::open(self.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut head = [0u8; 12];
        f.read_exact(&mut head)?;
        if &head[..8] != MAGIC {
            return Err(invalid_data("snapshot: bad magic"));
        }
        let meta_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        // Meta is a log id and a membership: anything large is a corrupt header.
        if meta_len > MAX_META {
            return Err(invalid_data(format!("snapshot: meta length {meta_len}")));
        }
        let mut meta = vec![0u8; meta_len];
        f.read_exact(&mut meta)?;
        serde_json::from_slice(&meta)
            .map(Some)
            .map_err(|e| invalid_data(format!("snapshot meta: {e}")))
    }

    /// Reads and verifies the whole snapshot file.
    fn load(&self) -> io::Result<Option<(SnapshotMeta, SnapshotData)>> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |why: &str| invalid_data(format!("{}: {why}", path.display()));
        if bytes.len() < 8 + 4 + 8 + 4 || &bytes[..8] != MAGIC {
            return Err(bad("not a snapshot file"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != crc {
            return Err(bad("checksum mismatch"));
        }
        let meta_len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        let meta_end = 12usize
            .checked_add(meta_len)
            .filter(|e| e + 8 <= body.len())
            .ok_or_else(|| bad("truncated meta"))?;
        let meta: SnapshotMeta =
            serde_json::from_slice(&body[12..meta_end]).map_err(|e| bad(&format!("meta: {e}")))?;
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&body[meta_end..meta_end + 8]);
        let data_len = u64::from_le_bytes(len8) as usize;
        if body.len() - meta_end - 8 != data_len {
            return Err(bad("data length mismatch"));
        }
        let data = body[meta_end + 8..].to_vec();
        *self.current.lock() = Some(meta.clone());
        Ok(Some((meta, data)))
    }

    /// Atomically writes a snapshot unless the one on disk is at least as new.
    fn persist(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let _guard = self.write_lock.lock();
        if let Some(cur) = self.current.lock().as_ref()
            && cur.last_log_id >= meta.last_log_id
        {
            return Ok(());
        }
        let meta_json = serde_json::to_vec(meta)?;
        let meta_len = (meta_json.len() as u32).to_le_bytes();
        let data_len = (data.len() as u64).to_le_bytes();
        let mut crc = crc32c::crc32c(MAGIC);
        for part in [&meta_len[..], &meta_json, &data_len, data] {
            crc = crc32c::crc32c_append(crc, part);
        }
        let crc = crc.to_le_bytes();
        write_atomic(
            &self.path(),
            &[MAGIC, &meta_len, &meta_json, &data_len, data, &crc],
        )?;
        *self.current.lock() = Some(meta.clone());
        // Debug: with the default policy this fires every 5000 writes.
        tracing::debug!(last_log_id = ?meta.last_log_id, bytes = data.len(), "metadata snapshot saved");
        Ok(())
    }
}

/// The openraft state machine handle.
pub(crate) struct StateMachineStore {
    shared: Arc<Shared>,
    files: Arc<SnapshotFiles>,
}

impl StateMachineStore {
    pub(crate) fn open(dir: &Path, shared: Arc<Shared>) -> io::Result<StateMachineStore> {
        Ok(StateMachineStore {
            shared,
            files: Arc::new(SnapshotFiles::open(dir)?),
        })
    }
}

/// A consistent copy of the state taken between two applies (O(1), shared with the live
/// state until applies change it); encoded on a blocking thread.
pub(crate) struct SnapshotBuilder {
    state: ClusterState,
    meta: SnapshotMeta,
    files: Arc<SnapshotFiles>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = std::mem::take(&mut self.state);
        let meta = self.meta.clone();
        let files = Arc::clone(&self.files);
        let m = meta.clone();
        let data = tokio::task::spawn_blocking(move || -> io::Result<SnapshotData> {
            let data = snapshot_format::encode(&state);
            // The state's last reference may be this one: free it off the async runtime too.
            drop(state);
            files.persist(&m, &data)?;
            Ok(data)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let d = self.shared.data.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id;
            let wake = matches!(
                entry.payload,
                EntryPayload::Normal(Command::FenceBroker { .. } | Command::RegisterBroker { .. })
            );
            let response = {
                // One entry per lock so local readers never wait for a whole batch.
                let mut d = self.shared.data.write();
                let r = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(cmd) => {
                        let r = d.meta.apply(cmd);
                        if let Response::Rejected(e) = &r {
                            tracing::debug!(%log_id, error = %e, "metadata command rejected");
                        }
                        r
                    }
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(log_id), m);
                        Response::Ok
                    }
                };
                d.last_applied = Some(log_id);
                r
            };
            self.shared.bump();
            if wake {
                self.shared.controller_wake.notify_one();
            }
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called on the state machine task between applies: the clone is a consistent view,
        // and O(1) (shared maps), so the lock is held for no longer than a small apply.
        let d = self.shared.data.read();
        SnapshotBuilder {
            state: d.meta.state.clone(),
            meta: SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.membership.clone(),
            },
            files: Arc::clone(&self.files),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        // Decoding, the range index and the file write are O(state): a blocking thread, and
        // the state lock only for the swap.
        let files = Arc::clone(&self.files);
        let m = meta.clone();
        let meta_state = tokio::task::spawn_blocking(move || -> io::Result<MetaState> {
            let state = snapshot_format::decode(&snapshot)?;
            // Durable first: a crash must never leave a half-installed snapshot behind.
            files.persist(&m, &snapshot)?;
            Ok(MetaState::from_state(state))
        })
        .await
        .map_err(io::Error::other)??;
        {
            let mut d = self.shared.data.write();
            d.meta = meta_state;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
        }
        self.shared.bump();
        tracing::debug!(last_log_id = ?meta.last_log_id, "metadata snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let files = Arc::clone(&self.files);
        let loaded = tokio::task::spawn_blocking(move || files.load())
            .await
            .map_err(io::Error::other)??;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::LogStore;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::{ErrorSubject, ErrorVerb, StorageError};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>>
        {
            let err = |e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
            let dir = tempfile::tempdir().map_err(err)?;
            // Small segments so the suite's purges and truncations cross segment boundaries.
            let log = LogStore::open(&dir.path().join("log"), 512).map_err(err)?;
            let sm = StateMachineStore::open(&dir.path().join("snapshot"), Shared::new())
                .map_err(err)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's conformance suite for log storage and state machine.
    #[tokio::test]
    async fn openraft_storage_suite() {
        Suite::test_all(Builder).await.unwrap();
    }

    fn range(stream_id: u64, start: u64, end: u64) -> shale_stream::ObjectRange {
        shale_stream::ObjectRange {
            stream_id,
            start_offset: start,
            end_offset: end,
            position: start * 100,
            length: ((end - start) * 100) as u32,
            max_timestamp: 1_700_000_000_000 + start as i64,
            crc: start as u32,
        }
    }

    fn wal_object(id: u64, ranges: Vec<shale_stream::ObjectRange>) -> shale_stream::ObjectMeta {
        shale_stream::ObjectMeta {
            id,
            key: format!("cluster-x/wal/{id:016}"),
            size: ranges.iter().map(|r| u64::from(r.length)).sum(),
            ranges,
            committed_at_ms: 1_700_000_000_000 + id as i64,
        }
    }

    /// A state with `objects` live objects, each holding one range of each of `per_object`
    /// streams (out of `streams`), built through apply like a real log would.
    fn big_state(objects: u64, streams: u64, per_object: u64) -> MetaState {
        use crate::types::Command;
        use shale_stream::StreamCommit;
        let mut m = MetaState::default();
        for sid in 1..=streams {
            m.apply(Command::OpenStream {
                stream_id: sid,
                claim: None,
            });
        }
        let mut ends = vec![0u64; streams as usize + 1];
        for id in 1..=objects {
            let mut ranges = Vec::new();
            let mut commits = Vec::new();
            for k in 0..per_object {
                let sid = 1 + (id * per_object + k) % streams;
                let start = ends[sid as usize];
                ends[sid as usize] = start + 10;
                ranges.push(range(sid, start, start + 10));
                commits.push(StreamCommit {
                    stream_id: sid,
                    epoch: 1,
                });
            }
            ranges.sort_by_key(|r| (r.stream_id, r.start_offset));
            let r = m.apply(Command::CommitObject {
                object: wal_object(id, ranges),
                streams: commits,
            });
            assert_eq!(r, Response::Ok);
        }
        m
    }

    fn shares_every_map(a: &ClusterState, b: &ClusterState) -> bool {
        a.nodes.ptr_eq(&b.nodes)
            && a.topics.ptr_eq(&b.topics)
            && a.streams.ptr_eq(&b.streams)
            && a.objects.ptr_eq(&b.objects)
            && a.dead_objects.ptr_eq(&b.dead_objects)
    }

    #[tokio::test]
    async fn taking_a_snapshot_shares_the_state_instead_of_copying_it() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new();
        shared.data.write().meta = big_state(2_000, 50, 2);
        let mut sm = StateMachineStore::open(dir.path(), Arc::clone(&shared)).unwrap();
        let builder = sm.get_snapshot_builder().await;
        // O(1) under the state lock whatever the state's size: no object was copied.
        assert!(shares_every_map(
            &builder.state,
            &shared.data.read().meta.state
        ));
    }

    #[tokio::test]
    async fn a_snapshot_holds_the_state_it_was_taken_at_while_applies_go_on() {
        use crate::types::Command;
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new();
        shared.data.write().meta = big_state(1_000, 10, 2);
        let mut sm = StateMachineStore::open(dir.path(), Arc::clone(&shared)).unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let before = shared.data.read().meta.state.clone();

        // Applies after the snapshot was taken: a retirement, a new object, a deleted stream.
        {
            let mut d = shared.data.write();
            let r = d.meta.apply(Command::TrimStream {
                epoch: None,
                stream_id: 1,
                new_start: 1_000,
                now_ms: 7,
            });
            assert_eq!(r, Response::Ok);
            let end = d.meta.state.streams.get(&2).unwrap().end_offset;
            let r = d.meta.apply(Command::CommitObject {
                object: wal_object(5_000, vec![range(2, end, end + 10)]),
                streams: vec![shale_stream::StreamCommit {
                    stream_id: 2,
                    epoch: 1,
                }],
            });
            assert_eq!(r, Response::Ok);
            let r = d.meta.apply(Command::DeleteStream {
                stream_id: 3,
                now_ms: 8,
            });
            assert_eq!(r, Response::Ok);
        }
        let after = shared.data.read().meta.state.clone();
        assert_ne!(after, before);

        let snap = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot_format::decode(&snap.snapshot).unwrap(), before);
        // And the file on disk holds the same.
        let (_, data) = sm.files.load().unwrap().unwrap();
        assert_eq!(snapshot_format::decode(&data).unwrap(), before);
        assert_eq!(shared.data.read().meta.state, after);
    }

    #[tokio::test]
    async fn a_corrupted_snapshot_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new();
        shared.data.write().meta = big_state(100, 5, 2);
        let mut sm = StateMachineStore::open(dir.path(), Arc::clone(&shared)).unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let good = fs::read(&path).unwrap();
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
        for at in [9, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let e = sm.get_current_snapshot().await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "byte {at}: {e}");
        }
        fs::write(&path, &good[..good.len() - 7]).unwrap();
        assert!(sm.get_current_snapshot().await.is_err());
    }

    #[tokio::test]
    async fn a_json_snapshot_file_from_before_the_binary_format_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let state = big_state(50, 5, 2).state;
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
        };
        let files = SnapshotFiles::open(dir.path()).unwrap();
        files
            .persist(&meta, &serde_json::to_vec(&state).unwrap())
            .unwrap();
        let shared = Shared::new();
        let mut sm = StateMachineStore::open(dir.path(), Arc::clone(&shared)).unwrap();
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(shared.data.read().meta.state, state);
        assert_eq!(
            shared.data.read().meta.all_ranges(1),
            big_state(50, 5, 2).all_ranges(1)
        );
    }

    /// Applies WAL commits (and every tenth a trim) for 400 ms; returns each one's time under
    /// the write lock and the next free object id.
    fn run_applies(
        shared: &Shared,
        mut next_id: u64,
        streams: u64,
    ) -> (Vec<std::time::Duration>, u64) {
        use crate::types::Command;
        use std::time::{Duration, Instant};
        let mut lat = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(400) {
            let t = Instant::now();
            {
                let mut d = shared.data.write();
                let sid = 1 + next_id % streams;
                let end = d.meta.state.streams.get(&sid).unwrap().end_offset;
                let r = d.meta.apply(Command::CommitObject {
                    object: wal_object(next_id, vec![range(sid, end, end + 10)]),
                    streams: vec![shale_stream::StreamCommit {
                        stream_id: sid,
                        epoch: 1,
                    }],
                });
                assert_eq!(r, Response::Ok);
                if next_id.is_multiple_of(10) {
                    // Retention on an old part of the tree.
                    let start = d.meta.state.streams.get(&sid).unwrap().start_offset;
                    d.meta.apply(Command::TrimStream {
                        epoch: None,
                        stream_id: sid,
                        new_start: start + 10,
                        now_ms: 1,
                    });
                }
            }
            lat.push(t.elapsed());
            next_id += 1;
        }
        (lat, next_id)
    }

    fn percentiles(mut lat: Vec<std::time::Duration>) -> String {
        lat.sort();
        let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        format!(
            "{} applies, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            lat.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            lat[lat.len() - 1]
        )
    }

    /// Figures for docs/meta-hardening.md: how long taking a snapshot and a compaction scan
    /// hold the state lock, how long applies take while a snapshot is being written, and the
    /// size and speed of the snapshot encodings.
    /// `cargo test -p shale-meta --release --lib snapshot_figures -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; run by hand"]
    async fn snapshot_figures() {
        use std::time::Instant;
        const OBJECTS: u64 = 100_000;
        const STREAMS: u64 = 1_000;
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new();
        let t = Instant::now();
        shared.data.write().meta = big_state(OBJECTS, STREAMS, 4);
        println!(
            "built {OBJECTS} objects (4 ranges each, {STREAMS} streams) in {:?}",
            t.elapsed()
        );
        let mut sm = StateMachineStore::open(dir.path(), Arc::clone(&shared)).unwrap();

        // What live_objects() used to do under the lock on every compaction pass.
        let t = Instant::now();
        let deep: Vec<shale_stream::ObjectMeta> = {
            let d = shared.data.read();
            d.meta.state.objects.values().cloned().collect()
        };
        println!(
            "deep copy of all objects (old live_objects, under the lock): {:?}",
            t.elapsed()
        );
        drop(deep);
        let t = Instant::now();
        let objects = shared.data.read().meta.state.objects.clone();
        println!(
            "O(1) copy of all objects (live_objects now, under the lock): {:?}",
            t.elapsed()
        );
        drop(objects);

        let t = Instant::now();
        let mut builder = sm.get_snapshot_builder().await;
        println!("get_snapshot_builder (state lock held): {:?}", t.elapsed());

        // Applies while the snapshot is encoded and written on another thread: the first
        // touch of each shared tree node pays a path copy (copy-on-write).
        let applier = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || run_applies(&shared, OBJECTS + 1, STREAMS))
        };
        let t = Instant::now();
        let snap = builder.build_snapshot().await.unwrap();
        println!(
            "build_snapshot (encode + write + fsync, off the lock): {:?}, {} bytes",
            t.elapsed(),
            snap.snapshot.len()
        );
        let (lat, next) = applier.join().unwrap();
        println!("applies while the snapshot was built: {}", percentiles(lat));
        // The same load without a snapshot pending, to tell copy-on-write from CPU contention.
        let (lat, _) = run_applies(&shared, next, STREAMS);
        println!("applies without a snapshot pending:   {}", percentiles(lat));

        // The encodings side by side, on the state as snapshotted.
        let state = snapshot_format::decode(&snap.snapshot).unwrap();
        let t = Instant::now();
        let json = serde_json::to_vec(&state).unwrap();
        let json_enc = t.elapsed();
        let t = Instant::now();
        let back: ClusterState = serde_json::from_slice(&json).unwrap();
        let json_dec = t.elapsed();
        assert_eq!(back, state);
        let t = Instant::now();
        let bin = snapshot_format::encode(&state);
        let bin_enc = t.elapsed();
        let t = Instant::now();
        let back = snapshot_format::decode(&bin).unwrap();
        let bin_dec = t.elapsed();
        assert_eq!(back, state);
        println!(
            "json: {} bytes, encode {json_enc:?}, decode {json_dec:?}",
            json.len()
        );
        println!(
            "protobuf: {} bytes ({:.1}% of json), encode {bin_enc:?}, decode {bin_dec:?}",
            bin.len(),
            100.0 * bin.len() as f64 / json.len() as f64
        );

        // Restart (or a follower catching up): decode, index, write the file, swap.
        let meta = snap.meta.clone();
        let dir2 = tempfile::tempdir().unwrap();
        for (name, data) in [("json", json), ("protobuf", bin)] {
            let shared2 = Shared::new();
            let mut sm2 = StateMachineStore::open(dir2.path(), Arc::clone(&shared2)).unwrap();
            *sm2.files.current.lock() = None;
            let t = Instant::now();
            sm2.install_snapshot(&meta, data).await.unwrap();
            println!("install_snapshot from {name}: {:?}", t.elapsed());
            assert_eq!(shared2.data.read().meta.state, state);
        }
    }
}

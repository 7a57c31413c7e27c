//! The Raft log and vote on local disk.
//!
//! Layout of the log directory:
//! - `log-<first index, 20 digits>.seg`: append-only segments of frames
//!   (`len | crc32c | json(entry)`, see [`crate::fsutil`]); a segment is named after the index
//!   of the first entry written to it and rolled once it exceeds `segment_bytes`.
//! - `vote.json`, `purged.json`: small checksummed files replaced atomically.
//!
//! Durability: `append` writes the frames (page cache) and hands the flush to a dedicated
//! flusher thread, which fsyncs once for everything queued meanwhile (group commit) and only
//! then reports the entries flushed to openraft. Commit, and so every acknowledged write,
//! therefore implies the entry is on disk. Vote saves, truncation and purge first wait for
//! pending flushes so all log I/O stays in submission order.
//!
//! Only an index (log id, segment, offset) and a bounded cache of recent entries are kept in
//! memory; older entries are read back from the segments.

use crate::fsutil::{
    FRAME_HEADER, Frame, check_frame, decode_frame, encode_frame, invalid_data, read_checked_json,
    sync_dir, write_checked_json,
};
use crate::types::{Entry, LogId, TypeConfig, Vote};
use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

const VOTE_FILE: &str = "vote.json";
const PURGED_FILE: &str = "purged.json";
const SEGMENT_PREFIX: &str = "log-";
const SEGMENT_SUFFIX: &str = ".seg";
/// Recent entries kept decoded: the apply path reads every entry right after it is appended.
const CACHE_MAX_BYTES: usize = 16 << 20;
const CACHE_MAX_ENTRIES: usize = 8192;

fn segment_name(first_index: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_index:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

/// Where an entry's frame is.
struct Loc {
    log_id: LogId,
    segment: u64,
    offset: u64,
    len: u32,
}

struct LogInner {
    dir: PathBuf,
    segment_bytes: u64,
    /// By first index; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    /// Present (unpurged) entries, consecutive indexes.
    locs: VecDeque<Loc>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
}

enum FlushReq {
    /// Fsync `file`, then report the append flushed.
    Sync {
        file: Arc<File>,
        callback: IOFlushed<TypeConfig>,
    },
    /// Completes once everything queued before it is durable.
    Barrier(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// Log storage handle; clones share the same log (the reader given to openraft is a clone).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    flusher: mpsc::Sender<FlushReq>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, truncating a torn tail of the last segment.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let vote = read_checked_json::<Vote>(&dir.join(VOTE_FILE))?;
        let last_purged = read_checked_json::<LogId>(&dir.join(PURGED_FILE))?;

        let mut names = Vec::new();
        for ent in fs::read_dir(dir)? {
            let ent = ent?;
            if let Some(first) = ent.file_name().to_str().and_then(parse_segment_name) {
                names.push((first, ent.path()));
            }
        }
        names.sort();

        let mut inner = LogInner {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            last_purged,
            vote,
            cache: BTreeMap::new(),
            cache_bytes: 0,
        };
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            inner.load_segment(first, path, is_last)?;
        }
        // A crash between writing purged.json and deleting segments leaves them behind.
        inner.remove_purged_segments()?;
        tracing::debug!(
            dir = %dir.display(),
            segments = inner.segments.len(),
            entries = inner.locs.len(),
            last_purged = ?inner.last_purged,
            "raft log opened"
        );

        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("shale-meta-log-flush".into())
            .spawn(move || run_flusher(rx))?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            flusher: tx,
        })
    }

    /// Waits until every append submitted before is durable (and reported).
    async fn barrier(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flusher
            .send(FlushReq::Barrier(tx))
            .map_err(|_| io::Error::other("raft log flusher stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("raft log flusher stopped"))?
    }
}

/// Group commit: one fsync per file for everything queued while the previous fsync ran.
fn run_flusher(rx: mpsc::Receiver<FlushReq>) {
    // After a failed fsync the page cache state is unknown (the kernel may drop dirty pages),
    // so every later flush must fail too.
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if failed.is_none() {
            let mut files: Vec<&Arc<File>> = Vec::new();
            for req in &batch {
                if let FlushReq::Sync { file, .. } = req
                    && !files.iter().any(|f| Arc::ptr_eq(f, file))
                {
                    files.push(file);
                }
            }
            for f in files {
                if let Err(e) = f.sync_data() {
                    tracing::error!(error = %e, "raft log fsync failed");
                    failed = Some((e.kind(), e.to_string()));
                    break;
                }
            }
        }
        for req in batch {
            let res = match &failed {
                None => Ok(()),
                Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            };
            match req {
                FlushReq::Sync { callback, .. } => callback.io_completed(res),
                FlushReq::Barrier(tx) => {
                    let _ = tx.send(res);
                }
            }
        }
    }
}

impl LogInner {
    fn load_segment(&mut self, first: u64, path: PathBuf, is_last: bool) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = fs::read(&path)?;
        let mut off = 0usize;
        let mut torn = None;
        loop {
            let payload = match decode_frame(&bytes[off..]) {
                Frame::End => break,
                Frame::Torn(why) => {
                    torn = Some(why);
                    break;
                }
                Frame::Ok(p) => p,
            };
            // A frame with a valid checksum that does not decode is not a torn write but an
            // incompatible or corrupt log: refuse rather than silently drop committed data.
            let entry: Entry = serde_json::from_slice(payload).map_err(|e| {
                invalid_data(format!("{} at {off}: bad entry: {e}", path.display()))
            })?;
            let index = entry.index();
            let skip = self.last_purged.as_ref().is_some_and(|p| index <= p.index);
            if !skip {
                if let Some(expected) = self.next_index()
                    && index != expected
                {
                    return Err(invalid_data(format!(
                        "{} at {off}: log index {index}, expected {expected}",
                        path.display()
                    )));
                }
                self.locs.push_back(Loc {
                    log_id: entry.log_id(),
                    segment: first,
                    offset: off as u64,
                    len: payload.len() as u32,
                });
            }
            off += FRAME_HEADER + payload.len();
        }
        if let Some(why) = torn {
            if !is_last {
                // Segments are fsynced before rolling, so only the last one can be torn.
                return Err(invalid_data(format!(
                    "{} at {off}: corrupt frame in a sealed segment: {why}",
                    path.display()
                )));
            }
            tracing::warn!(
                segment = %path.display(),
                offset = off,
                dropped_bytes = bytes.len() - off,
                reason = %why,
                "truncating torn tail of the raft log"
            );
            file.set_len(off as u64)?;
            file.sync_all()?;
        }
        self.segments.insert(
            first,
            Segment {
                path,
                file: Arc::new(file),
                len: off as u64,
            },
        );
        Ok(())
    }

    /// Index the next appended entry must have, if determined.
    fn next_index(&self) -> Option<u64> {
        match self.locs.back() {
            Some(l) => Some(l.log_id.index + 1),
            None => self.last_purged.as_ref().map(|p| p.index + 1),
        }
    }

    fn create_segment(&mut self, first_index: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first_index,
            Segment {
                path,
                file: Arc::new(file),
                len: 0,
            },
        );
        Ok(())
    }

    /// Writes `buf` at the end of the active segment.
    fn write_active(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some((_, seg)) = self.segments.iter_mut().next_back() else {
            return Err(io::Error::other("no active log segment"));
        };
        seg.file.write_all_at(buf, seg.len)?;
        seg.len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Appends entries; returns the file that needs an fsync (None for an empty batch).
    fn append<I: IntoIterator<Item = Entry>>(
        &mut self,
        entries: I,
    ) -> io::Result<Option<Arc<File>>> {
        let mut buf = Vec::new();
        let mut wrote = false;
        for entry in entries {
            let index = entry.index();
            if let Some(expected) = self.next_index()
                && index != expected
            {
                return Err(io::Error::other(format!(
                    "non-consecutive append: index {index}, expected {expected}"
                )));
            }
            let payload = serde_json::to_vec(&entry)?;
            let frame_len = (FRAME_HEADER + payload.len()) as u64;
            let active_len = self
                .segments
                .iter()
                .next_back()
                .map(|(_, s)| s.len + buf.len() as u64);
            match active_len {
                None => self.create_segment(index)?,
                Some(len) if len > 0 && len + frame_len > self.segment_bytes => {
                    self.write_active(&mut buf)?;
                    self.roll(index)?;
                }
                Some(_) => {}
            }
            let Some((&seg_key, seg)) = self.segments.iter().next_back() else {
                return Err(io::Error::other("no active log segment"));
            };
            let offset = seg.len + buf.len() as u64;
            encode_frame(&mut buf, &payload);
            self.locs.push_back(Loc {
                log_id: entry.log_id(),
                segment: seg_key,
                offset,
                len: payload.len() as u32,
            });
            self.cache_insert(index, entry, payload.len());
            wrote = true;
        }
        self.write_active(&mut buf)?;
        if !wrote {
            return Ok(None);
        }
        Ok(self
            .segments
            .values()
            .next_back()
            .map(|s| Arc::clone(&s.file)))
    }

    /// Seals the active segment (fsync, so only the last segment can ever be torn) and starts
    /// a new one.
    fn roll(&mut self, first_index: u64) -> io::Result<()> {
        if let Some(seg) = self.segments.values().next_back() {
            seg.file.sync_data()?;
        }
        self.create_segment(first_index)
    }

    fn cache_insert(&mut self, index: u64, entry: Entry, size: usize) {
        self.cache.insert(index, (entry, size));
        self.cache_bytes += size;
        while self.cache_bytes > CACHE_MAX_BYTES || self.cache.len() > CACHE_MAX_ENTRIES {
            match self.cache.pop_first() {
                Some((_, (_, s))) => self.cache_bytes -= s,
                None => break,
            }
        }
    }

    fn cache_retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.cache.retain(|k, _| keep(*k));
        self.cache_bytes = self.cache.values().map(|(_, s)| *s).sum();
    }

    fn read_loc(&self, loc: &Loc) -> io::Result<Entry> {
        let seg = self.segments.get(&loc.segment).ok_or_else(|| {
            invalid_data(format!(
                "log segment {} of entry {} missing",
                loc.segment, loc.log_id
            ))
        })?;
        let mut buf = vec![0u8; FRAME_HEADER + loc.len as usize];
        seg.file.read_exact_at(&mut buf, loc.offset)?;
        let payload = check_frame(&buf).map_err(|e| {
            invalid_data(format!("{}: entry {}: {e}", seg.path.display(), loc.log_id))
        })?;
        let entry: Entry = serde_json::from_slice(payload).map_err(|e| {
            invalid_data(format!("{}: entry {}: {e}", seg.path.display(), loc.log_id))
        })?;
        if entry.log_id() != loc.log_id {
            return Err(invalid_data(format!(
                "{}: expected entry {}, found {}",
                seg.path.display(),
                loc.log_id,
                entry.log_id()
            )));
        }
        Ok(entry)
    }

    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> io::Result<Vec<Entry>> {
        let (Some(first), Some(last)) = (self.locs.front(), self.locs.back()) else {
            return Ok(Vec::new());
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(e) => *e,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(e) => *e - 1,
            Bound::Unbounded => last,
        }
        .min(last);
        if start > end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - start + 1) as usize);
        for index in start..=end {
            match self.cache.get(&index) {
                Some((e, _)) => out.push(e.clone()),
                None => {
                    let loc = self.locs.get((index - first) as usize).ok_or_else(|| {
                        io::Error::other(format!("log index {index} missing from the log index"))
                    })?;
                    out.push(self.read_loc(loc)?);
                }
            }
        }
        Ok(out)
    }

    fn truncate_after(&mut self, last: Option<&LogId>) -> io::Result<()> {
        let keep = last.map(|l| l.index);
        let beyond = |i: u64| keep.is_none_or(|k| i > k);
        while self.locs.back().is_some_and(|l| beyond(l.log_id.index)) {
            self.locs.pop_back();
        }
        self.cache_retain(|i| !beyond(i));

        let mut removed = false;
        match self.locs.back() {
            Some(l) => {
                let (seg_key, end) = (l.segment, l.offset + (FRAME_HEADER as u64) + l.len as u64);
                let later: Vec<u64> = self
                    .segments
                    .range((Bound::Excluded(seg_key), Bound::Unbounded))
                    .map(|(k, _)| *k)
                    .collect();
                for k in later {
                    if let Some(seg) = self.segments.remove(&k) {
                        fs::remove_file(&seg.path)?;
                        removed = true;
                    }
                }
                if let Some(seg) = self.segments.get_mut(&seg_key)
                    && seg.len != end
                {
                    seg.file.set_len(end)?;
                    seg.file.sync_all()?;
                    seg.len = end;
                }
            }
            None => {
                // Nothing kept but (possibly) purged entries: start over with no segment.
                for (_, seg) in std::mem::take(&mut self.segments) {
                    fs::remove_file(&seg.path)?;
                    removed = true;
                }
            }
        }
        if removed {
            // Deleted segments must not reappear after a crash with stale entries.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        if self.last_purged.as_ref().is_some_and(|p| *p >= log_id) {
            return Ok(());
        }
        // Persist the marker first: loading skips entries up to it even if segments survive.
        write_checked_json(&self.dir.join(PURGED_FILE), &log_id)?;
        let upto = log_id.index;
        self.last_purged = Some(log_id);
        while self.locs.front().is_some_and(|l| l.log_id.index <= upto) {
            self.locs.pop_front();
        }
        self.cache_retain(|i| i > upto);
        self.remove_purged_segments()
    }

    /// Deletes sealed segments whose entries are all purged (never the active segment).
    fn remove_purged_segments(&mut self) -> io::Result<()> {
        let Some(upto) = self.last_purged.as_ref().map(|p| p.index) else {
            return Ok(());
        };
        let keys: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for w in keys.windows(2) {
            // Segment w[0] holds indexes below w[1], the next segment's first index.
            if w[1] <= upto + 1
                && let Some(seg) = self.segments.remove(&w[0])
            {
                fs::remove_file(&seg.path)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // Under the lock so the read is atomic with respect to truncation.
        self.inner.lock().read_range(range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.inner.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.inner.lock();
        let last_purged_log_id = inner.last_purged;
        let last_log_id = match inner.locs.back() {
            Some(l) => Some(l.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.barrier().await?;
        let path = self.inner.lock().dir.join(VOTE_FILE);
        let v = *vote;
        tokio::task::spawn_blocking(move || write_checked_json(&path, &v))
            .await
            .map_err(io::Error::other)??;
        self.inner.lock().vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let file = self.inner.lock().append(entries)?;
        match file {
            Some(file) => self
                .flusher
                .send(FlushReq::Sync { file, callback })
                .map_err(|_| io::Error::other("raft log flusher stopped")),
            None => {
                callback.io_completed(Ok(()));
                Ok(())
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        tracing::debug!(?last_log_id, "truncating raft log");
        self.barrier().await?;
        self.inner.lock().truncate_after(last_log_id.as_ref())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        tracing::debug!(%log_id, "purging raft log");
        self.barrier().await?;
        self.inner.lock().purge(log_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use openraft::EntryPayload;
    use openraft::type_config::TypeConfigExt;
    use openraft::vote::RaftLeaderId;

    fn log_id(term: u64, index: u64) -> LogId {
        let leader = openraft::impls::leader_id_adv::LeaderId::<u64, u64>::new(term, 1);
        LogId::new(leader.to_committed(), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::OpenStream {
                stream_id: index,
                claim: None,
            }),
        }
    }

    async fn append_wait(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    /// Entries do not implement PartialEq (commands do not); compare their encoding.
    fn json(e: &Entry) -> String {
        serde_json::to_string(e).unwrap()
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index()).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn reopen_rolls_purges_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny segments so every few entries roll.
        let mut s = LogStore::open(dir.path(), 300).unwrap();
        append_wait(&mut s, (1..=20).map(|i| entry(1, i)).collect()).await;
        assert!(segment_files(dir.path()).len() > 3);
        drop(s);

        let mut s = LogStore::open(dir.path(), 300).unwrap();
        let all = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(indexes(&all), (1..=20).collect::<Vec<_>>());
        assert_eq!(json(&all[4]), json(&entry(1, 5)));

        s.purge(log_id(1, 10)).await.unwrap();
        s.truncate_after(Some(log_id(1, 15))).await.unwrap();
        append_wait(&mut s, (16..=18).map(|i| entry(2, i)).collect()).await;
        drop(s);

        let mut s = LogStore::open(dir.path(), 300).unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 10)));
        assert_eq!(st.last_log_id, Some(log_id(2, 18)));
        let all = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(indexes(&all), (11..=18).collect::<Vec<_>>());
        assert_eq!(json(&all[7]), json(&entry(2, 18)));
        // Segments entirely below the purge point are gone.
        let first_seg = segment_files(dir.path())[0].clone();
        let name = first_seg.file_name().unwrap().to_str().unwrap().to_string();
        assert!(parse_segment_name(&name).unwrap() > 1);
    }

    #[tokio::test]
    async fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
        append_wait(&mut s, (1..=5).map(|i| entry(1, i)).collect()).await;
        drop(s);

        // Cut the last frame in half, as a crash in the middle of a write would.
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 7).unwrap();
        drop(f);

        let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
        let all = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(indexes(&all), vec![1, 2, 3, 4]);
        // The log continues cleanly after the cut.
        append_wait(&mut s, vec![entry(1, 5), entry(1, 6)]).await;
        drop(s);

        // Garbage after the last frame (e.g. a zero-filled extent) is dropped too.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 100]).unwrap();
        drop(f);
        let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
        let all = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(indexes(&all), vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn corrupt_sealed_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), 300).unwrap();
        append_wait(&mut s, (1..=10).map(|i| entry(1, i)).collect()).await;
        drop(s);
        let first = segment_files(dir.path())[0].clone();
        let mut bytes = fs::read(&first).unwrap();
        bytes[20] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        assert!(LogStore::open(dir.path(), 300).is_err());
    }

    #[tokio::test]
    async fn vote_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), None);
        let v = Vote::new_committed(3, 1);
        s.save_vote(&v).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(v));
    }
}

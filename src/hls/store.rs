//! Where finished files go, and the worker that puts them there off the streaming thread.
//!
//! Specifications: RFC 8216 §6.2.2 (a segment removed from a live playlist stays available for a
//! while: `max-files`); the atomic rename and the worker are ours.
//!
//! A [`Store`] writes or deletes one file. The [`Output`] worker runs the store's jobs in order on
//! its own thread from a bounded queue: the streaming thread only queues. Local files are written
//! to a temporary name and renamed, so a reader sees a whole file or none.

use crate::net::backoff::Backoff;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Segment,
    /// An fMP4 initialisation segment (EXT-X-MAP): served and cached as a segment, but never
    /// dropped from a full upload queue (every segment after it needs it).
    Init,
    /// An LL-HLS part (partial segment): served and cached as a segment.
    Part,
    Playlist,
    Key,
}

impl FileKind {
    /// A file that a full upload queue may drop: a media segment or part, which a player
    /// skips. Init segments, playlists and keys are never dropped.
    pub fn droppable(self) -> bool {
        matches!(self, FileKind::Segment | FileKind::Part)
    }
}

/// Why a store operation failed. Locations in these errors never carry `user:password@`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The local file system (`action`: "write", "create directory", "delete").
    #[error("cannot {action} {path}: {message}")]
    Io {
        action: &'static str,
        path: String,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// The origin answered with a status that is no success.
    #[error("{method} {location}: the origin answered HTTP {status}")]
    Http {
        method: &'static str,
        location: String,
        status: u16,
    },
    /// The object store refused a request with an S3 error document: its `Code` (e.g.
    /// `SignatureDoesNotMatch`, `InvalidAccessKeyId`, `NoSuchBucket`) and `Message`.
    #[error(
        "{method} {location}: the object store answered HTTP {status} {code}{}",
        if .message.is_empty() { String::new() } else { format!(" ({})", .message) }
    )]
    S3 {
        method: &'static str,
        location: String,
        status: u16,
        code: String,
        message: String,
    },
    /// Reaching the origin: resolving, connecting, sending, a timeout, a bad answer.
    #[error("{method} {location}: {message}")]
    Network {
        method: &'static str,
        location: String,
        kind: Option<std::io::ErrorKind>,
        message: String,
    },
    /// TLS with the origin (an untrusted certificate, a failed handshake).
    #[error("{method} {location}: {message}")]
    Tls {
        method: &'static str,
        location: String,
        message: String,
    },
    /// A location that cannot be uploaded to.
    #[error("cannot upload to {location}: {message}")]
    Location { location: String, message: String },
    /// The application's stream (`get-playlist-stream` / `get-fragment-stream`) failed.
    #[error("writing {location} to the application's stream: {message}")]
    Application { location: String, message: String },
}

impl StoreError {
    /// Worth trying again (the network, a busy origin, a refused DELETE, which must not stop the
    /// stream); otherwise the output stops with an error (disk, TLS, a refused PUT).
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Http { method, status, .. } | StoreError::S3 { method, status, .. } => {
                *method == "DELETE" || matches!(status, 408 | 425 | 429 | 500..=599)
            }
            StoreError::Network { .. } => true,
            StoreError::Io { .. }
            | StoreError::Tls { .. }
            | StoreError::Location { .. }
            | StoreError::Application { .. } => false,
        }
    }

    fn io(action: &'static str, path: impl Into<String>, e: &std::io::Error) -> StoreError {
        StoreError::Io {
            action,
            path: path.into(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

pub trait Store: Send + Sync + 'static {
    fn put(&self, location: &str, kind: FileKind, data: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, location: &str, kind: FileKind) -> Result<(), StoreError>;
    /// The local path of a location, for the built-in HTTP server.
    fn local_path(&self, _location: &str) -> Option<PathBuf> {
        None
    }
}

/// Local files, written atomically (temporary file in the same directory, then rename).
#[derive(Debug, Default)]
pub struct DirStore;

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

impl Store for DirStore {
    fn put(&self, location: &str, _kind: FileKind, data: &[u8]) -> Result<(), StoreError> {
        let path = Path::new(location);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::io("create directory", dir.display().to_string(), &e))?;
        }
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.flush()?;
            drop(f);
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io("write", location, &e)
        })?;
        log::trace!("wrote {location} ({} bytes)", data.len());
        Ok(())
    }

    fn delete(&self, location: &str, _kind: FileKind) -> Result<(), StoreError> {
        match std::fs::remove_file(location) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::debug!("{location} was already gone");
                Ok(())
            }
            Err(e) => Err(StoreError::io("delete", location, &e)),
        }
    }

    fn local_path(&self, location: &str) -> Option<PathBuf> {
        Some(PathBuf::from(location))
    }
}

/// Removes the hidden temporary files (`.NAME.tmp`) a killed run left for the files it was
/// writing: those of the locations in `exact` and those whose names start with one of the
/// `prefixes` (segment and key patterns). Returns what was removed.
pub fn remove_stale_temporaries(exact: &[&str], prefixes: &[&str]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut dirs: Vec<(PathBuf, String, bool)> = Vec::new();
    for (loc, is_prefix) in exact
        .iter()
        .map(|l| (*l, false))
        .chain(prefixes.iter().map(|p| (*p, true)))
    {
        let path = Path::new(loc);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dirs.push((dir, name, is_prefix));
    }
    for (dir, name, is_prefix) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(inner) = file.strip_prefix('.').and_then(|f| f.strip_suffix(".tmp")) else {
                continue;
            };
            let ours = if is_prefix {
                inner.starts_with(&name)
            } else {
                inner == name
            };
            if ours && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

/// What an LL-HLS playlist (one with `CAN-BLOCK-RELOAD=YES`) holds, for blocking playlist
/// reloads (RFC 8216bis §6.2.5.2): read from its text when it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistPosition {
    /// Media sequence number of the segment being filled: every segment before it is complete.
    pub next_msn: u64,
    /// Parts of that segment already listed.
    pub open_parts: u64,
    pub target_s: u64,
    pub part_target_s: f64,
    /// URI of EXT-X-PRELOAD-HINT.
    pub preload_hint: Option<String>,
    pub ended: bool,
}

impl PlaylistPosition {
    /// None for a playlist that does not offer blocking reloads.
    pub fn parse(text: &[u8]) -> Option<PlaylistPosition> {
        let text = std::str::from_utf8(text).ok()?;
        if !text.contains("CAN-BLOCK-RELOAD=YES") {
            return None;
        }
        let mut media_sequence = 0u64;
        let mut segments = 0u64;
        let mut open_parts = 0u64;
        let mut target_s = 0;
        let mut part_target_s = 0.0;
        let mut preload_hint = None;
        let mut ended = false;
        let attr = |line: &str, name: &str| -> Option<String> {
            let at = line.find(name)? + name.len();
            let rest = &line[at..];
            Some(match rest.strip_prefix('"') {
                Some(q) => q.split('"').next()?.to_owned(),
                None => rest.split(',').next()?.to_owned(),
            })
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                media_sequence = v.trim().parse().ok()?;
            } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                target_s = v.trim().parse().ok()?;
            } else if line.starts_with("#EXT-X-PART-INF:") {
                part_target_s = attr(line, "PART-TARGET=")?.parse().ok()?;
            } else if line.starts_with("#EXT-X-SKIP:") {
                segments = segments.checked_add(attr(line, "SKIPPED-SEGMENTS=")?.parse().ok()?)?;
            } else if line.starts_with("#EXTINF:") {
                segments = segments.checked_add(1)?;
                open_parts = 0;
            } else if line.starts_with("#EXT-X-PART:") {
                open_parts += 1;
            } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
                preload_hint = attr(line, "URI=");
            } else if line.starts_with("#EXT-X-ENDLIST") {
                ended = true;
            }
        }
        Some(PlaylistPosition {
            next_msn: media_sequence.checked_add(segments)?,
            open_parts,
            target_s,
            part_target_s,
            preload_hint,
            ended,
        })
    }

    /// The playlist has segment `msn` complete, or part `part` of it (or later), or ended.
    pub fn has(&self, msn: u64, part: Option<u64>) -> bool {
        self.ended
            || msn < self.next_msn
            || (msn == self.next_msn && part.is_some_and(|p| p < self.open_parts))
    }

    /// Too far ahead to wait for (RFC 8216bis §6.2.5.2): a segment more than two after the last
    /// complete one, or a part more than the Advance Part Limit (3 / PART-TARGET below one
    /// second, else 3) after the last part.
    pub fn too_far(&self, msn: u64, part: Option<u64>) -> bool {
        if msn > self.next_msn.saturating_add(1) {
            return true;
        }
        let limit = if self.part_target_s > 0.0 && self.part_target_s < 1.0 {
            (3.0 / self.part_target_s).ceil() as u64
        } else {
            3
        };
        match part {
            Some(p) if msn == self.next_msn => p >= self.open_parts.saturating_add(limit),
            Some(p) => p >= limit,
            None => false,
        }
    }
}

/// Files the output has published, by the last component of their name, for the built-in HTTP
/// server: only these can ever be served.
#[derive(Debug, Default)]
pub struct Published {
    files: Mutex<HashMap<String, (PathBuf, FileKind)>>,
    /// LL-HLS playlists by name: what they hold.
    positions: Mutex<HashMap<String, PlaylistPosition>>,
    /// Counts the files published: what [`Published::wait_for`] waits on.
    changes: tokio::sync::watch::Sender<u64>,
    /// LL-HLS parts being written (streamed to requests for a preload-hinted part).
    growing: super::growing::GrowingParts,
}

/// A preload-hinted part as a request finds it: written, or being written.
#[derive(Debug, Clone)]
pub enum HintedPart {
    File(PathBuf, FileKind),
    Growing(Arc<super::growing::Growing>),
}

impl Published {
    pub fn get(&self, name: &str) -> Option<(PathBuf, FileKind)> {
        self.files.lock().unwrap().get(name).cloned()
    }

    /// The file named `name` once it is published, waiting at most `timeout` for it (for
    /// LL-HLS blocking requests: a part or playlist about to be written); None if it was not
    /// published by then.
    pub async fn wait_for(&self, name: &str, timeout: Duration) -> Option<(PathBuf, FileKind)> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Seen before looking: a file published after the look wakes the wait.
            changes.borrow_and_update();
            if let Some(file) = self.get(name) {
                return Some(file);
            }
            // Err only when the sender is gone, which self holds.
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }

    /// The part `name` once it is written or being written, waiting at most `timeout`; a file
    /// is preferred (when the part is complete, it is served as a file).
    pub async fn wait_for_part(&self, name: &str, timeout: Duration) -> Option<HintedPart> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some((path, kind)) = self.get(name) {
                return Some(HintedPart::File(path, kind));
            }
            if let Some(part) = self.growing.get(name) {
                return Some(HintedPart::Growing(part));
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }

    /// The part `name` being written, if it is.
    pub fn growing(&self, name: &str) -> Option<Arc<super::growing::Growing>> {
        self.growing.get(name)
    }

    /// Bytes of the part `name` being written (none: it begins); see [`Job::Grow`].
    fn grow(&self, name: &str, data: &[u8]) {
        let new = self.growing.get(name).is_none();
        self.growing.grow(name, data);
        if new {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// What the LL-HLS playlist `name` holds (None: not published, or not LL-HLS).
    pub fn position(&self, name: &str) -> Option<PlaylistPosition> {
        self.positions.lock().unwrap().get(name).cloned()
    }

    /// Whether `name` is the preload hint of a published playlist (a part about to be written).
    pub fn is_hinted(&self, name: &str) -> bool {
        self.hinted_by(name).is_some()
    }

    /// What the published playlist whose preload hint is `name` holds.
    pub fn hinted_by(&self, name: &str) -> Option<PlaylistPosition> {
        self.positions
            .lock()
            .unwrap()
            .values()
            .find(|p| {
                p.preload_hint
                    .as_deref()
                    .is_some_and(|h| crate::hls::location::basename(h) == name)
            })
            .cloned()
    }

    /// Waits at most `timeout` until the LL-HLS playlist `name` holds segment `msn` (part
    /// `part`); true once it does.
    pub async fn wait_for_position(
        &self,
        name: &str,
        msn: u64,
        part: Option<u64>,
        timeout: Duration,
    ) -> bool {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if self.position(name).is_some_and(|p| p.has(msn, part)) {
                return true;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return false;
            }
        }
    }

    fn insert(&self, name: String, path: PathBuf, kind: FileKind) {
        self.insert_with(name, path, kind, None);
    }

    /// Publishes a file; a playlist's `data` tells what it holds (for blocking reloads).
    fn insert_with(&self, name: String, path: PathBuf, kind: FileKind, data: Option<&[u8]>) {
        if kind == FileKind::Playlist {
            let mut positions = self.positions.lock().unwrap();
            match data.and_then(PlaylistPosition::parse) {
                Some(p) => positions.insert(name.clone(), p),
                None => positions.remove(&name),
            };
        }
        self.files
            .lock()
            .unwrap()
            .insert(name.clone(), (path, kind));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        if kind == FileKind::Part
            && let Some(data) = data
        {
            // Its readers get the rest from the file's bytes (it is served as a file now).
            self.growing.complete(&name, data);
        }
    }

    fn remove(&self, name: &str) {
        self.positions.lock().unwrap().remove(name);
        self.files.lock().unwrap().remove(name);
        self.growing.abandon(name);
    }
}

/// A job for the worker. Its `Debug` form leaves the data out (a key file's data is the key).
#[derive(Clone)]
pub enum Job {
    Put {
        location: String,
        kind: FileKind,
        data: Arc<Vec<u8>>,
    },
    Delete {
        location: String,
        kind: FileKind,
    },
    /// LL-HLS, with the built-in server: more bytes of the part being written at `location`
    /// (none: it begins), streamed to requests for it until its `Put` completes it. Nothing is
    /// stored.
    Grow {
        location: String,
        data: Arc<Vec<u8>>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Put {
                location,
                kind,
                data,
            } => write!(
                f,
                "Put {kind:?} {} ({} bytes)",
                super::location::redact_location(location),
                data.len()
            ),
            Job::Delete { location, kind } => write!(
                f,
                "Delete {kind:?} {}",
                super::location::redact_location(location)
            ),
            Job::Grow { location, data } => write!(
                f,
                "Grow {} ({} bytes)",
                super::location::redact_location(location),
                data.len()
            ),
        }
    }
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Put { data, .. } | Job::Grow { data, .. } => data.len(),
            Job::Delete { .. } => 0,
        }
    }

    fn location(&self) -> &str {
        match self {
            Job::Put { location, .. }
            | Job::Delete { location, .. }
            | Job::Grow { location, .. } => location,
        }
    }

    /// The location for logs and events: no `user:password@`.
    fn shown(&self) -> std::borrow::Cow<'_, str> {
        super::location::redact_location(self.location())
    }
}

/// What the worker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// Output stopped: nothing more will be written.
    Fatal(StoreError),
    /// The queue was full: a queued job for `location` was dropped; output goes on.
    Dropped { location: String },
    /// A job failed `attempts` times with retryable errors and was given up; output goes on.
    GaveUp {
        location: String,
        attempts: u32,
        error: StoreError,
    },
}

impl std::fmt::Display for OutputEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputEvent::Fatal(e) => write!(f, "{e}"),
            OutputEvent::Dropped { location } => {
                write!(f, "output queue full: dropped {location}")
            }
            OutputEvent::GaveUp {
                location,
                attempts,
                error,
            } => write!(
                f,
                "gave up on {location} after {attempts} attempts: {error}"
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// Jobs queued at most.
    pub capacity: usize,
    /// Bytes of file data queued at most (a job bigger than this alone is still taken).
    pub max_bytes: usize,
    /// When full: wait for room (local disk) or drop the oldest queued segment (network, so the
    /// pipeline never stalls on a slow origin).
    pub block_when_full: bool,
    /// Attempts per job for retryable failures.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            capacity: 64,
            max_bytes: 256 * 1024 * 1024,
            block_when_full: true,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    busy: bool,
    closing: bool,
    failed: Option<StoreError>,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    dropped: AtomicU64,
    written: AtomicU64,
}

pub type EventFn = Box<dyn Fn(OutputEvent) + Send + Sync>;

/// The output worker.
pub struct Output {
    store: Arc<dyn Store>,
    published: Option<Arc<Published>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    config: OutputConfig,
    events: Arc<EventFn>,
}

impl Output {
    pub fn start(
        store: Arc<dyn Store>,
        config: OutputConfig,
        published: Option<Arc<Published>>,
        events: EventFn,
    ) -> Output {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let events = Arc::new(events);
        let thread = {
            let shared = shared.clone();
            let config = config.clone();
            let events = events.clone();
            let store = store.clone();
            let published = published.clone();
            std::thread::Builder::new()
                .name("hls-output".into())
                .spawn(move || worker(shared, store, config, published, events))
                .expect("spawn hls output thread")
        };
        Output {
            store,
            published,
            shared,
            thread: Some(thread),
            config,
            events,
        }
    }

    /// Queues a job. Fails once the output has stopped on an error.
    pub fn submit(&self, job: Job) -> Result<(), StoreError> {
        let mut q = self.shared.queue.lock().unwrap();
        if let Some(e) = &q.failed {
            return Err(e.clone());
        }
        // A newer playlist supersedes a queued one.
        if let Job::Put {
            kind: FileKind::Playlist,
            location,
            ..
        } = &job
        {
            q.jobs.retain(|j| {
                !matches!(j, Job::Put { kind: FileKind::Playlist, location: l, .. } if l == location)
            });
        }
        let full = |q: &Queue| {
            let queued: usize = q.jobs.iter().map(Job::bytes).sum();
            !q.jobs.is_empty()
                && (q.jobs.len() >= self.config.capacity
                    || queued + job.bytes() > self.config.max_bytes)
        };
        while full(&q) {
            if self.config.block_when_full {
                q = self.shared.cv.wait(q).unwrap();
                if let Some(e) = &q.failed {
                    return Err(e.clone());
                }
            } else {
                // Only a media segment is dropped; with none queued the new job goes over the
                // bound (what remains are playlists, which replace each other, keys and init
                // segments: small, and never to be lost).
                let Some(idx) = q
                    .jobs
                    .iter()
                    .position(|j| matches!(j, Job::Put { kind, .. } if kind.droppable()))
                else {
                    log::debug!(
                        "output queue full, but nothing queued may be dropped: queueing {} over the bound",
                        job.shown()
                    );
                    break;
                };
                let old = q.jobs.remove(idx).expect("non-empty");
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "output queue full ({} jobs, {} bytes with the new one): dropped {}",
                    q.jobs.len() + 1,
                    q.jobs.iter().map(Job::bytes).sum::<usize>() + job.bytes(),
                    old.shown()
                );
                (self.events)(OutputEvent::Dropped {
                    location: old.shown().into_owned(),
                });
            }
        }
        // Never the job's data: a key file's data is the key.
        log::trace!(
            "queued {} ({} bytes), {} jobs waiting before it",
            job.shown(),
            job.bytes(),
            q.jobs.len()
        );
        q.jobs.push_back(job);
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Whether a built-in server serves what is written (it is the one reader of LL-HLS delta
    /// playlists).
    pub fn serves(&self) -> bool {
        self.published.is_some()
    }

    /// Whether the built-in server serves the files written: local files (uploads and the
    /// application's streams are not served).
    pub fn serves_local_files(&self) -> bool {
        self.published.is_some() && self.store.local_path("").is_some()
    }

    /// Publishes a file that already exists (written by a previous run) for the HTTP server.
    pub fn announce(&self, location: &str, kind: FileKind) {
        if let (Some(p), Some(path)) = (&self.published, self.store.local_path(location))
            && path.exists()
        {
            p.insert(
                crate::hls::location::basename(location).to_owned(),
                path,
                kind,
            );
        }
    }

    /// Waits until every queued job is done (or `timeout`). True when done.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queue.lock().unwrap();
        while !q.jobs.is_empty() || q.busy {
            let now = Instant::now();
            if now >= deadline || q.failed.is_some() {
                return false;
            }
            q = self.shared.cv.wait_timeout(q, deadline - now).unwrap().0;
        }
        q.failed.is_none()
    }

    /// Jobs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Jobs done successfully.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> Option<StoreError> {
        self.shared.queue.lock().unwrap().failed.clone()
    }

    /// Finishes the queued jobs (waiting at most `timeout`) and stops the worker.
    pub fn close(mut self, timeout: Duration) -> bool {
        let done = self.flush(timeout);
        self.stop();
        done
    }

    fn stop(&mut self) {
        {
            let mut q = self.shared.queue.lock().unwrap();
            q.closing = true;
            q.jobs.clear();
            self.shared.cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            // A worker stuck in a network request finishes it (bounded by the store's timeouts)
            // on its own; waiting for it here would hold up the caller.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    config: OutputConfig,
    published: Option<Arc<Published>>,
    events: Arc<EventFn>,
) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap();
            loop {
                if q.closing {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    q.busy = true;
                    break j;
                }
                q = shared.cv.wait(q).unwrap();
            }
        };
        if let Job::Grow { location, data } = &job {
            // Only for the built-in server: nothing to store, nothing that can fail.
            if let Some(p) = &published {
                p.grow(crate::hls::location::basename(location), data);
            }
            let mut q = shared.queue.lock().unwrap();
            q.busy = false;
            shared.cv.notify_all();
            continue;
        }
        let backoff = Backoff::new(config.initial_backoff, config.max_backoff);
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let r = match &job {
                Job::Put {
                    location,
                    kind,
                    data,
                } => store.put(location, *kind, data),
                Job::Delete { location, kind } => store.delete(location, *kind),
                Job::Grow { .. } => Ok(()),
            };
            match r {
                Err(e) if e.retryable() && attempt < config.max_attempts => {
                    let delay = backoff.delay(attempt);
                    log::debug!(
                        "{} failed (attempt {attempt} of {}), retrying in {} ms: {e}",
                        job.shown(),
                        config.max_attempts,
                        delay.as_millis()
                    );
                    // Sleep for the backoff (new jobs wake the condvar too), but stop at once
                    // when closing.
                    let until = Instant::now() + delay;
                    let mut q = shared.queue.lock().unwrap();
                    while !q.closing && Instant::now() < until {
                        q = shared.cv.wait_timeout(q, until - Instant::now()).unwrap().0;
                    }
                    if q.closing {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        if let Err(e) = &result
            && !e.retryable()
        {
            log::debug!("{} failed, the output stops: {e}", job.shown());
            // Reported before anyone waiting for the output can see it stopped.
            events(OutputEvent::Fatal(e.clone()));
        }
        let mut q = shared.queue.lock().unwrap();
        q.busy = false;
        match result {
            Ok(()) => {
                shared.written.fetch_add(1, Ordering::Relaxed);
                match &job {
                    // LL-HLS parts come several times a second: trace.
                    Job::Put { kind, data, .. } => log::log!(
                        if *kind == FileKind::Part {
                            log::Level::Trace
                        } else {
                            log::Level::Debug
                        },
                        "{kind:?} {} written ({} bytes, attempt {attempt})",
                        job.shown(),
                        data.len()
                    ),
                    Job::Delete { kind, .. } => {
                        log::debug!("{kind:?} {} deleted (attempt {attempt})", job.shown())
                    }
                    Job::Grow { .. } => {}
                }
                if let Some(p) = &published {
                    let name = crate::hls::location::basename(job.location()).to_owned();
                    match &job {
                        Job::Put {
                            kind,
                            location,
                            data,
                        } => {
                            if let Some(path) = store.local_path(location) {
                                p.insert_with(name, path, *kind, Some(data));
                            }
                        }
                        Job::Delete { .. } => p.remove(&name),
                        Job::Grow { .. } => {}
                    }
                }
            }
            Err(e) if e.retryable() => {
                log::debug!("gave up on {} after {attempt} attempts: {e}", job.shown());
                events(OutputEvent::GaveUp {
                    location: job.shown().into_owned(),
                    attempts: attempt,
                    error: e,
                });
            }
            Err(e) => {
                q.failed = Some(e);
                q.jobs.clear();
            }
        }
        shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that fails the first `failures` calls, then records.
    struct Flaky {
        failures: Mutex<u32>,
        log: Mutex<Vec<String>>,
        retryable: bool,
    }

    impl Store for Flaky {
        fn put(&self, location: &str, _: FileKind, _: &[u8]) -> Result<(), StoreError> {
            let mut f = self.failures.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(if self.retryable {
                    StoreError::Http {
                        method: "PUT",
                        location: location.into(),
                        status: 503,
                    }
                } else {
                    StoreError::Http {
                        method: "PUT",
                        location: location.into(),
                        status: 403,
                    }
                });
            }
            self.log.lock().unwrap().push(format!("put {location}"));
            Ok(())
        }
        fn delete(&self, location: &str, _: FileKind) -> Result<(), StoreError> {
            self.log.lock().unwrap().push(format!("delete {location}"));
            Ok(())
        }
    }

    fn put(l: &str, kind: FileKind) -> Job {
        Job::Put {
            location: l.into(),
            kind,
            data: Arc::new(vec![1, 2, 3]),
        }
    }

    fn quick() -> OutputConfig {
        OutputConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..OutputConfig::default()
        }
    }

    #[test]
    fn playlist_positions_for_blocking_reloads() {
        let text =
            b"#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5,CAN-SKIP-UNTIL=12\n\
#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n\
#EXT-X-PART:DURATION=0.5,URI=\"s13.0.m4s\",INDEPENDENT=YES\n#EXTINF:2,\ns13.m4s\n\
#EXTINF:2,\ns14.m4s\n#EXT-X-PART:DURATION=0.5,URI=\"s15.0.m4s\"\n\
#EXT-X-PART:DURATION=0.5,URI=\"s15.1.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s15.2.m4s\"\n";
        let p = PlaylistPosition::parse(text).unwrap();
        assert_eq!(
            p,
            PlaylistPosition {
                next_msn: 15,
                open_parts: 2,
                target_s: 2,
                part_target_s: 0.5,
                preload_hint: Some("s15.2.m4s".into()),
                ended: false,
            }
        );
        assert!(p.has(14, None) && p.has(15, Some(1)) && p.has(3, Some(9)));
        assert!(!p.has(15, None) && !p.has(15, Some(2)) && !p.has(16, Some(0)));
        // Two segments past the last complete one (14), and 3 / 0.5 = 6 parts past the last.
        assert!(!p.too_far(16, None) && p.too_far(17, None));
        assert!(!p.too_far(15, Some(7)) && p.too_far(15, Some(8)));
        assert!(!p.too_far(16, Some(5)) && p.too_far(16, Some(6)));
        // Not LL-HLS, or not a playlist: nothing to block on.
        assert_eq!(
            PlaylistPosition::parse(b"#EXTM3U\n#EXTINF:2,\na.ts\n"),
            None
        );
        assert_eq!(PlaylistPosition::parse(&[0xff, 0xfe]), None);
        let broken = b"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n#EXTINF:1,\na\n";
        assert_eq!(PlaylistPosition::parse(broken), None, "no overflow");
    }

    #[test]
    fn retries_in_order_with_backoff() {
        let store = Arc::new(Flaky {
            failures: Mutex::new(3),
            log: Mutex::new(Vec::new()),
            retryable: true,
        });
        let out = Output::start(store.clone(), quick(), None, Box::new(|_| {}));
        out.submit(put("a.ts", FileKind::Segment)).unwrap();
        out.submit(Job::Delete {
            location: "old.ts".into(),
            kind: FileKind::Segment,
        })
        .unwrap();
        assert!(out.close(Duration::from_secs(5)));
        assert_eq!(*store.log.lock().unwrap(), ["put a.ts", "delete old.ts"]);
    }

    #[test]
    fn a_fatal_error_stops_the_output_and_is_reported() {
        let store = Arc::new(Flaky {
            failures: Mutex::new(1),
            log: Mutex::new(Vec::new()),
            retryable: false,
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let out = Output::start(
            store,
            quick(),
            None,
            Box::new(move |e| ev.lock().unwrap().push(e)),
        );
        out.submit(put("a.ts", FileKind::Segment)).unwrap();
        assert!(!out.flush(Duration::from_secs(5)));
        let refused = StoreError::Http {
            method: "PUT",
            location: "a.ts".into(),
            status: 403,
        };
        assert_eq!(out.failed(), Some(refused.clone()));
        assert_eq!(
            out.submit(put("b.ts", FileKind::Segment)),
            Err(refused.clone())
        );
        assert_eq!(*events.lock().unwrap(), [OutputEvent::Fatal(refused)]);
    }

    #[test]
    fn dir_store_writes_atomically_and_publishes() {
        let dir = std::env::temp_dir().join(format!("hls-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let published = Arc::new(Published::default());
        let out = Output::start(
            Arc::new(DirStore),
            OutputConfig::default(),
            Some(published.clone()),
            Box::new(|_| {}),
        );
        let loc = dir.join("sub/p.m3u8").to_string_lossy().into_owned();
        out.submit(put(&loc, FileKind::Playlist)).unwrap();
        assert!(out.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read(&loc).unwrap(), [1, 2, 3]);
        let names: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p.m3u8"], "no temporary file left");
        assert_eq!(
            published.get("p.m3u8").map(|p| p.0),
            Some(PathBuf::from(&loc))
        );
        out.submit(Job::Delete {
            location: loc.clone(),
            kind: FileKind::Playlist,
        })
        .unwrap();
        assert!(out.close(Duration::from_secs(5)));
        assert!(published.get("p.m3u8").is_none());
        assert!(!Path::new(&loc).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_temporaries_of_our_files_are_removed_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("hls-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            ".segment00007.ts.tmp",
            ".playlist.m3u8.tmp",
            ".key00001.key.tmp",
            ".other.tmp",
            "segment00006.ts",
        ] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let d = dir.to_string_lossy().into_owned();
        let removed = remove_stale_temporaries(
            &[&format!("{d}/playlist.m3u8")],
            &[&format!("{d}/segment"), &format!("{d}/key")],
        );
        assert_eq!(removed.len(), 3);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".other.tmp", "segment00006.ts"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Submits a job the stuck store never finishes and waits until the worker holds it, so
    /// that what is submitted next stays queued.
    fn occupy_worker(out: &Output) {
        out.submit(put("busy.ts", FileKind::Segment)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.shared.queue.lock().unwrap().busy {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An output over `store` that drops rather than blocks when full (`config` sets the
    /// bounds), its worker already held by a job that `store` does not finish.
    fn occupied_output(store: Arc<dyn Store>, config: OutputConfig) -> Output {
        let out = Output::start(
            store,
            OutputConfig {
                block_when_full: false,
                ..config
            },
            None,
            Box::new(|_| {}),
        );
        occupy_worker(&out);
        out
    }

    /// The locations waiting in `out`'s queue, oldest first.
    fn queued(out: &Output) -> Vec<String> {
        out.shared
            .queue
            .lock()
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.location().to_owned())
            .collect()
    }

    #[test]
    fn a_full_network_queue_drops_the_oldest_segment_and_coalesces_playlists() {
        struct Stuck(Mutex<bool>, Condvar);
        impl Store for Stuck {
            fn put(&self, _: &str, _: FileKind, _: &[u8]) -> Result<(), StoreError> {
                let mut g = self.0.lock().unwrap();
                while !*g {
                    g = self.1.wait(g).unwrap();
                }
                Ok(())
            }
            fn delete(&self, _: &str, _: FileKind) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let stuck = Arc::new(Stuck(Mutex::new(false), Condvar::new()));
        let out = occupied_output(
            stuck.clone(),
            OutputConfig {
                capacity: 3,
                ..quick()
            },
        );
        for i in 0..3 {
            out.submit(put(&format!("s{i}.ts"), FileKind::Segment))
                .unwrap();
            out.submit(put("p.m3u8", FileKind::Playlist)).unwrap();
        }
        assert_eq!(queued(&out), ["s1.ts", "s2.ts", "p.m3u8"]);
        assert_eq!(out.dropped(), 1);
        // The byte bound counts too: with room for 7 bytes, a 3-byte segment pushes out one.
        let bounded = occupied_output(
            stuck.clone(),
            OutputConfig {
                capacity: 100,
                max_bytes: 7,
                ..quick()
            },
        );
        for i in 0..3 {
            bounded
                .submit(put(&format!("b{i}.ts"), FileKind::Segment))
                .unwrap();
        }
        assert_eq!(queued(&bounded), ["b1.ts", "b2.ts"]);
        assert_eq!(bounded.dropped(), 1);
        // Init segments, keys and playlists are never dropped: a segment queued after an init
        // segment goes instead, and with no segment queued the bound is exceeded.
        let precious = occupied_output(
            stuck.clone(),
            OutputConfig {
                capacity: 2,
                ..quick()
            },
        );
        precious.submit(put("init.mp4", FileKind::Init)).unwrap();
        precious.submit(put("k.key", FileKind::Key)).unwrap();
        precious.submit(put("s0.m4s", FileKind::Segment)).unwrap();
        precious.submit(put("p.m3u8", FileKind::Playlist)).unwrap();
        assert_eq!(queued(&precious), ["init.mp4", "k.key", "p.m3u8"]);
        assert_eq!(precious.dropped(), 1);
        *stuck.0.lock().unwrap() = true;
        stuck.1.notify_all();
        assert!(out.close(Duration::from_secs(5)));
        assert!(bounded.close(Duration::from_secs(5)));
        assert!(precious.close(Duration::from_secs(5)));
    }
}

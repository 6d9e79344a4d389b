//! LL-HLS parts while they are being written, for the built-in server to stream: a GET for the
//! part named by EXT-X-PRELOAD-HINT is answered at once, and its body follows the part's bytes
//! as the writer produces them (HTTP/1.1 chunked transfer coding, HTTP/2 DATA frames), ending
//! when the part is complete.
//!
//! Specifications: RFC 8216bis §4.4.5.3 (EXT-X-PRELOAD-HINT: "the server SHOULD respond to a
//! request for a hinted resource ... as soon as it can", serving it "as it is produced" being
//! what lets a client get it at once), §6.2.6 (serving a preload-hinted resource); RFC 9112
//! §7.1 (chunked transfer coding).
//!
//! The writer hands the bytes of the part being filled to the output worker (in order with the
//! files it writes), which appends them here ([`GrowingParts::grow`]); when the part's file is
//! published, the rest of its bytes are appended and the part is complete
//! ([`GrowingParts::complete`]): a reader gets exactly the file's bytes. A part that is not
//! completed (deleted, pushed out by newer ones, or its bytes not a prefix of the file) is
//! abandoned, and its readers get an error (the body ends without its last chunk, so a client
//! cannot take it for a whole part).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Parts being written kept at most: older ones are abandoned (the writer fills one at a time;
/// a few more cover names that were hinted but whose file was never written).
const MAX_GROWING: usize = 4;

/// What a reader gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    /// The part is complete: nothing more.
    End,
    /// The part will not be completed (or not before the reader's deadline).
    Failed,
}

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    len: usize,
    /// Some(true): complete; Some(false): abandoned.
    ended: Option<bool>,
}

/// One part being written.
#[derive(Debug)]
pub struct Growing {
    state: Mutex<State>,
    /// Bumped on every change.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Growing {
    fn new() -> Growing {
        Growing {
            state: Mutex::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn append(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut s = self.state.lock().unwrap();
        if s.ended.is_some() {
            return;
        }
        s.len += data.len();
        s.chunks.push(Bytes::copy_from_slice(data));
        drop(s);
        self.changed();
    }

    fn end(&self, complete: bool) {
        let mut s = self.state.lock().unwrap();
        if s.ended.is_none() {
            s.ended = Some(complete);
        }
        drop(s);
        self.changed();
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`-th piece of the part (from 0), waiting for it until `deadline` at most.
    pub async fn piece(&self, index: usize, deadline: tokio::time::Instant) -> Piece {
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            {
                let s = self.state.lock().unwrap();
                if let Some(chunk) = s.chunks.get(index) {
                    return Piece::Data(chunk.clone());
                }
                match s.ended {
                    Some(true) => return Piece::End,
                    Some(false) => return Piece::Failed,
                    None => {}
                }
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return Piece::Failed;
            }
        }
    }
}

/// The parts being written, by file name.
#[derive(Debug, Default)]
pub struct GrowingParts {
    parts: Mutex<Table>,
}

/// The parts by name, and their names oldest first.
#[derive(Debug, Default)]
struct Table(HashMap<String, Arc<Growing>>, VecDeque<String>);

impl GrowingParts {
    pub fn get(&self, name: &str) -> Option<Arc<Growing>> {
        self.parts.lock().unwrap().0.get(name).cloned()
    }

    /// Appends `data` to the part `name`, which begins being written if it was not (with no
    /// data: made known, for a request that comes before its first bytes).
    pub fn grow(&self, name: &str, data: &[u8]) {
        let part = {
            let mut guard = self.parts.lock().unwrap();
            let Table(parts, order) = &mut *guard;
            match parts.get(name) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(Growing::new());
                    parts.insert(name.to_owned(), p.clone());
                    order.push_back(name.to_owned());
                    while order.len() > MAX_GROWING {
                        if let Some(old) = order.pop_front().and_then(|n| parts.remove(&n)) {
                            log::debug!("a part being written was never completed: abandoned");
                            old.end(false);
                        }
                    }
                    p
                }
            }
        };
        part.append(data);
    }

    fn take(&self, name: &str) -> Option<Arc<Growing>> {
        let mut guard = self.parts.lock().unwrap();
        let Table(parts, order) = &mut *guard;
        order.retain(|n| n != name);
        parts.remove(name)
    }

    /// The part `name` is complete, with these bytes (its file's): what its readers have not
    /// had yet is appended, and they get the end. If what was written of it is no prefix of
    /// `data`, it is abandoned instead.
    pub fn complete(&self, name: &str, data: &[u8]) {
        let Some(part) = self.take(name) else {
            return;
        };
        let prefix = {
            let s = part.state.lock().unwrap();
            let mut at = 0;
            s.chunks.iter().all(|c| {
                let same = data.get(at..at + c.len()) == Some(&c[..]);
                at += c.len();
                same
            })
        };
        if !prefix {
            log::warn!("{name}: the part written differs from what was streamed of it: abandoned");
            part.end(false);
            return;
        }
        let sent = part.len();
        part.append(&data[sent..]);
        part.end(true);
    }

    /// The part `name` will not be completed (its file was deleted, the output stopped).
    pub fn abandon(&self, name: &str) {
        if let Some(part) = self.take(name) {
            part.end(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn read_all(part: &Growing, deadline: Instant) -> (Vec<u8>, Piece) {
        crate::runtime::handle().block_on(async {
            let mut out = Vec::new();
            let mut i = 0;
            loop {
                match part.piece(i, deadline).await {
                    Piece::Data(d) => out.extend_from_slice(&d),
                    end => return (out, end),
                }
                i += 1;
            }
        })
    }

    #[test]
    fn a_reader_gets_the_pieces_as_they_come_and_then_the_rest_of_the_file() {
        let parts = Arc::new(GrowingParts::default());
        parts.grow("p.0.m4s", b"");
        let part = parts.get("p.0.m4s").unwrap();
        assert!(part.is_empty());
        let reader = {
            let part = part.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                read_all(&part, deadline)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        parts.grow("p.0.m4s", b"abc");
        std::thread::sleep(Duration::from_millis(50));
        parts.grow("p.0.m4s", b"def");
        parts.complete("p.0.m4s", b"abcdefgh");
        assert!(parts.get("p.0.m4s").is_none(), "complete: served as a file");
        let (data, end) = reader.join().unwrap();
        assert_eq!((data.as_slice(), end), (&b"abcdefgh"[..], Piece::End));
        // A late reader of the completed part still gets all of it.
        let late = read_all(&part, Instant::now() + Duration::from_secs(1));
        assert_eq!(late, (b"abcdefgh".to_vec(), Piece::End));
    }

    #[test]
    fn parts_not_completed_as_streamed_fail_their_readers() {
        let parts = GrowingParts::default();
        let soon = || Instant::now() + Duration::from_secs(1);
        parts.grow("a", b"xyz");
        let a = parts.get("a").unwrap();
        parts.complete("a", b"xYz!");
        assert_eq!(read_all(&a, soon()).1, Piece::Failed, "not a prefix");

        parts.grow("b", b"1");
        let b = parts.get("b").unwrap();
        parts.abandon("b");
        assert_eq!(read_all(&b, soon()), (b"1".to_vec(), Piece::Failed));

        // Nothing more comes: the reader's deadline ends it.
        parts.grow("c", b"1");
        let c = parts.get("c").unwrap();
        let t0 = std::time::Instant::now();
        let read = read_all(&c, Instant::now() + Duration::from_millis(200));
        assert_eq!(read, (b"1".to_vec(), Piece::Failed));
        assert!(t0.elapsed() >= Duration::from_millis(190));

        // At most MAX_GROWING at once: the oldest is abandoned.
        for i in 0..MAX_GROWING {
            parts.grow(&format!("n{i}"), b"");
        }
        assert!(parts.get("c").is_none());
        assert_eq!(read_all(&c, soon()).1, Piece::Failed);
        assert!(parts.get(&format!("n{}", MAX_GROWING - 1)).is_some());
        // Completing an unknown part does nothing.
        parts.complete("unknown", b"x");
    }
}

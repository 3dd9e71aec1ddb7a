//! Large payloads through shared memory instead of the pipe.
//!
//! A [`Bytes`](crate::Bytes) of [`SHARE_MIN`] bytes or more, encoded by the
//! pool for a local worker (an argument) or by such a worker for the pool
//! (a result), is copied once into a sealed memfd (`sys::memfd`), and the
//! stream carries a small *marker* in its place: a byte string of
//! [`MARKER_LEN`] bytes with the pool's random key, the sender's pid, its
//! descriptor and the length. Only a marker with the key resolves: a
//! user's bytes that look like one are plain bytes. The receiver opens `/proc/<pid>/fd/<n>`, checks the seals and
//! the size, and maps it read-only: the payload is never copied through
//! the pipe (64 KiB at a time, with a wake-up each way), nor decoded.
//!
//! Who keeps the sender's descriptor until the receiver has opened it:
//! - an argument's: its [`Batch`](crate::dispatcher::Batch), until every
//!   item of it has its outcome (a worker opens an argument before it
//!   runs the item);
//! - a result's: the worker lists its memfds in a `Shared` message and
//!   waits until the pool says (word 4 of the progress page, `sys::shm`)
//!   that it has opened them, before it writes the `Done` frame whose
//!   results name them; then it closes its own. So once that frame is
//!   out, its results are the pool's, whatever becomes of the worker.
//!   The pool hands them to the caller with the frame.
//!
//! Arguments are shared only while every worker that served said, in its
//! progress page, that it takes them (it knows the key and can open the
//! pool's descriptors); one behind a launcher, another user or another
//! host gets them on the stream.
//!
//! Only our own encoders and decoders turn this on, for the span of one
//! value, through thread-local state ([`sharing`], [`receiving`]): a
//! `Bytes` serialized anywhere else is plain bytes, and a marker-shaped
//! byte string decoded anywhere else is plain bytes.
//!
//! Nothing outlives its processes: a memfd has no name in any file system,
//! and its memory goes with its last descriptor or mapping, whoever is
//! killed. Remote workers (no shared memory) keep the stream.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::sys::{self, Mapping};

/// Payloads of this many bytes or more go through shared memory.
pub(crate) const SHARE_MIN: usize = 1 << 20;

/// Most shared payloads a worker lists ahead of one `Done` frame (it sends
/// one early rather than pass half of it; the pool refuses more).
pub(crate) const MAX_SHARED: usize = 64;

const MAGIC: [u8; 8] = *b"\0ppmemfd";

/// A marker: the magic, the pool's key, the sender's pid, its descriptor,
/// the length.
pub(crate) const MARKER_LEN: usize = MAGIC.len() + 8 + 4 + 4 + 8;

/// The pool's payload key: a random number its markers carry (the pool
/// passes it to its workers at start), so that only markers a pool or its
/// worker made resolve. A caller's own 32-byte payload that looks like a
/// marker is plain bytes (it would have to guess the key), and no
/// argument can name a memfd for the worker to read.
static KEY: OnceLock<u64> = OnceLock::new();

/// The key of this process's pools (made at first use).
pub(crate) fn pool_key() -> u64 {
    *KEY.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys come from the OS's randomness.
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// A worker at start: its pool's key, if the pool gave one.
pub(crate) fn set_key(key: u64) {
    let _ = KEY.set(key);
}

/// The key markers carry and are checked against, if this process has one
/// (a worker whose pool gave none never takes shared payloads).
pub(crate) fn key() -> Option<u64> {
    KEY.get().copied()
}

thread_local! {
    /// Encoding for a peer that shares memory: large payloads go to memfds.
    static SHARING: Cell<bool> = const { Cell::new(false) };
    /// The memfds made by this thread's encodings, for the caller of
    /// [`sharing`] to keep until the receiver has opened them.
    static MADE: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// How many there are (read once per item on the hot path: a plain
    /// cell, cheaper than the list's).
    static MADE_COUNT: Cell<usize> = const { Cell::new(0) };
    /// Decoding from a peer that shares memory: where markers resolve.
    static INBOX: RefCell<Option<Attached>> = const { RefCell::new(None) };
    /// A worker decoding an argument: markers open where they name (the
    /// hot path's inbox, a plain flag).
    static OPEN_INBOX: Cell<bool> = const { Cell::new(false) };
    /// This thread serves a pool that takes large results in shared memory.
    static WORKER_SHARES: Cell<bool> = const { Cell::new(false) };
    /// Why the last marker could not be resolved: serde's error type in
    /// postcard keeps no message, so the decoder asks here.
    static FAILED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Why a marker met by this thread's last failed decoding could not be
/// resolved, if that is why it failed.
pub(crate) fn take_failure() -> Option<String> {
    FAILED.with(|f| f.borrow_mut().take())
}

/// A worker's serve loop, at its start: whether its pool takes large
/// results in shared memory.
#[inline]
pub(crate) fn set_worker_shares(on: bool) {
    WORKER_SHARES.set(on);
}

/// A worker encoding a result (`f`): shared if its pool takes it so.
#[inline]
pub(crate) fn encoding_result<T>(f: impl FnOnce() -> T) -> T {
    sharing_if(WORKER_SHARES.get(), f)
}

/// A worker decoding an argument (`f`): markers open where they name.
#[inline]
pub(crate) fn decoding_argument<T>(f: impl FnOnce() -> T) -> T {
    struct Close;
    impl Drop for Close {
        #[inline]
        fn drop(&mut self) {
            OPEN_INBOX.set(false);
        }
    }
    OPEN_INBOX.set(true);
    let _close = Close;
    f()
}

/// Puts memfds taken with [`take_made`] back, after those made since.
pub(crate) fn restore_made(mut fds: Vec<OwnedFd>) {
    MADE.with(|m| {
        let mut m = m.borrow_mut();
        fds.append(&mut m);
        MADE_COUNT.set(fds.len());
        *m = fds;
    });
}

/// The payloads a worker listed in a `Shared` message, opened by the pool
/// when it read that message: by the worker's descriptor number.
#[derive(Debug, Default)]
pub(crate) struct Attached {
    pub(crate) pid: u32,
    pub(crate) fds: Vec<(u32, Result<OwnedFd, String>)>,
}

impl Attached {
    pub(crate) fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// Puts the thread-local flag back if the encoding unwinds, and drops
/// the memfds it made (no one will take them). Forgotten when the encoding
/// returns: its Drop runs only on the way out of a panic.
struct OnUnwind {
    sharing: bool,
    made: usize,
}

impl Drop for OnUnwind {
    fn drop(&mut self) {
        SHARING.set(self.sharing);
        drop(take_made(self.made));
    }
}

/// Runs `f` (one encoding for a peer that shares memory) with large
/// `Bytes` put in memfds; their descriptors wait in this thread's list
/// ([`made`], [`take_made`]).
#[inline]
pub(crate) fn sharing<T>(f: impl FnOnce() -> T) -> T {
    sharing_if(true, f)
}

/// [`sharing`] if `on`, else just `f()`: one call of `f` either way, so
/// an encoding on the hot path inlines into its loop (a closure called
/// from two branches is kept out of line).
#[inline]
pub(crate) fn sharing_if<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let sharing = SHARING.get();
    SHARING.set(sharing || on);
    let on_unwind = OnUnwind {
        sharing,
        made: made(),
    };
    let out = f();
    std::mem::forget(on_unwind);
    SHARING.set(sharing);
    out
}

/// How many memfds this thread has made and not handed over.
#[inline]
pub(crate) fn made() -> usize {
    MADE_COUNT.get()
}

/// The memfds this thread made since it had made `from`.
#[inline]
pub(crate) fn take_made(from: usize) -> Vec<OwnedFd> {
    if MADE_COUNT.get() <= from {
        return Vec::new();
    }
    MADE.with(|m| {
        let mut m = m.borrow_mut();
        let from = from.min(m.len());
        let taken = m.split_off(from);
        MADE_COUNT.set(m.len());
        taken
    })
}

/// Runs `f` (one decoding of a worker's frame) with markers resolved
/// among the payloads the frame came with.
pub(crate) fn receiving<T>(inbox: Attached, f: impl FnOnce() -> T) -> T {
    /// Empties the inbox when the decoding ends, unwinding included.
    struct Take;
    impl Drop for Take {
        fn drop(&mut self) {
            INBOX.with(|i| i.borrow_mut().take());
        }
    }
    INBOX.with(|i| *i.borrow_mut() = Some(inbox));
    FAILED.with(|f| f.borrow_mut().take());
    let _take = Take;
    f()
}

/// For `Bytes::serialize`: the marker to encode instead of `bytes`, if
/// they go through shared memory. A memfd that cannot be made (out of
/// memory or descriptors) leaves the payload on the stream.
pub(crate) fn share(bytes: &[u8]) -> Option<[u8; MARKER_LEN]> {
    // No more than a frame may list (the pool refuses more): past that,
    // one value's further payloads stay on the stream.
    if bytes.len() < SHARE_MIN || !SHARING.get() || made() >= MAX_SHARED {
        return None;
    }
    let key = key()?;
    match sys::seal_copy(bytes) {
        Ok(fd) => {
            let mut m = [0u8; MARKER_LEN];
            m[..8].copy_from_slice(&MAGIC);
            m[8..16].copy_from_slice(&key.to_le_bytes());
            m[16..20].copy_from_slice(&std::process::id().to_le_bytes());
            m[20..24].copy_from_slice(&(fd.as_raw_fd() as u32).to_le_bytes());
            m[24..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            MADE.with(|made| {
                let mut made = made.borrow_mut();
                made.push(fd);
                MADE_COUNT.set(made.len());
            });
            Some(m)
        }
        Err(e) => {
            log::debug!("procpool: a payload stays on the stream: no shared memory for it: {e}");
            None
        }
    }
}

/// For `Bytes::deserialize`: if `bytes` is a marker and this thread is
/// decoding from a peer that shares memory, the payload's mapping, or why
/// it cannot be had.
pub(crate) fn resolve(bytes: &[u8]) -> Option<Result<Mapping, String>> {
    if bytes.len() != MARKER_LEN || bytes[..8] != MAGIC {
        return None;
    }
    let resolved = match key() {
        // A worker decoding an argument without the pool's key (its
        // launcher dropped it): it cannot tell its pool's marker from a
        // user's look-alike, and running the task on a marker's 32 bytes
        // would be a wrong answer with no error. The item fails, saying
        // why (a genuine 32-byte argument starting with the 8-byte magic
        // is the price, and it fails loudly too).
        None if OPEN_INBOX.get() => Err(
            "the argument may be a payload in shared memory, which this worker cannot take: \
             it was started without its pool's key (PROCPOOL_SHARE_KEY); start every worker \
             the same way, or turn shared memory off (Builder::shared_memory(false))"
                .to_owned(),
        ),
        // Not our key: a user's bytes that happen to look like a marker.
        None => return None,
        Some(k) if bytes[8..16] != k.to_le_bytes() => return None,
        Some(_) => resolve_marker(bytes)?,
    };
    if let Err(why) = &resolved {
        FAILED.with(|f| *f.borrow_mut() = Some(why.clone()));
    }
    Some(resolved)
}

fn resolve_marker(bytes: &[u8]) -> Option<Result<Mapping, String>> {
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&bytes[r]);
        u64::from_le_bytes(b)
    };
    let (pid, fd, len) = (word(16..20) as u32, word(20..24) as u32, word(24..32));
    if OPEN_INBOX.get() {
        return Some(open_at(pid, fd, len));
    }
    INBOX.with(|inbox| {
        let inbox = inbox.borrow();
        let a = inbox.as_ref()?;
        let len = usize::try_from(len).map_err(|_| "a shared payload too large".to_owned());
        Some(match a.fds.iter().find(|(n, _)| *n == fd) {
            _ if a.pid != pid => Err(format!(
                "a shared payload names process {pid}, not its worker {}",
                a.pid
            )),
            None => Err(format!(
                "a shared payload names descriptor {fd}, which its worker did not list"
            )),
            Some((_, Err(e))) => Err(e.clone()),
            Some((_, Ok(f))) => len.and_then(|len| Mapping::new(f, len).map_err(|e| e.to_string())),
        })
    })
}

/// The payload a marker names, opened at its sender.
fn open_at(pid: u32, fd: u32, len: u64) -> Result<Mapping, String> {
    let len = usize::try_from(len).map_err(|_| "a shared payload too large".to_owned())?;
    sys::open_sealed(pid, fd)
        .and_then(|f| Mapping::new(&f, len))
        .map_err(|e| format!("cannot open the shared payload {fd} of process {pid}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bytes;

    fn big() -> Bytes {
        // Markers need this process's key: made here, not left to
        // whichever test of the binary happens to make a pool first.
        pool_key();
        Bytes::from(
            (0..SHARE_MIN + 7)
                .map(|i| (i % 253) as u8)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn only_a_sharing_encoding_shares_and_only_a_receiving_decoding_resolves() {
        let b = big();
        // Plain encoding: plain bytes.
        let plain = postcard::to_stdvec(&b).unwrap();
        assert_eq!(plain.len(), b.len() + 3);
        let before = made();
        let wire = sharing(|| postcard::to_stdvec(&b).unwrap());
        assert_eq!(wire.len(), 1 + MARKER_LEN);
        let fds = take_made(before);
        assert_eq!(fds.len(), 1);
        // Outside a receiving decoding, a marker is bytes like any other.
        assert_eq!(
            postcard::from_bytes::<Bytes>(&wire).unwrap().len(),
            MARKER_LEN
        );
        let back = decoding_argument(|| postcard::from_bytes::<Bytes>(&wire).unwrap());
        assert_eq!(back, b);
        // Through descriptors the receiver opened.
        let marker_fd = fds[0].as_raw_fd() as u32;
        let opened = sys::open_sealed(std::process::id(), marker_fd).unwrap();
        let attached = Attached {
            pid: std::process::id(),
            fds: vec![(marker_fd, Ok(opened))],
        };
        drop(fds);
        let back = receiving(attached, || postcard::from_bytes::<Bytes>(&wire).unwrap());
        assert_eq!(back, b);
    }

    #[test]
    fn a_marker_naming_what_was_not_listed_fails_to_decode() {
        let b = big();
        let wire = sharing(|| postcard::to_stdvec(&b).unwrap());
        let _fds = take_made(0);
        let r = receiving(Attached::default(), || postcard::from_bytes::<Bytes>(&wire));
        assert!(r.is_err());
    }

    #[test]
    fn an_encoding_that_panics_drops_what_it_made_and_stops_sharing() {
        let b = big();
        let before = made();
        let r = std::panic::catch_unwind(|| {
            sharing(|| {
                let _wire = postcard::to_stdvec(&b).unwrap();
                assert_eq!(made(), before + 1);
                panic!("a result's Serialize panicked after a shared payload");
            })
        });
        assert!(r.is_err());
        assert_eq!(made(), before, "the memfd it made is dropped");
        assert!(!SHARING.get(), "the flag is back");
        // And a sharing encoding that returns keeps what it made.
        let _ = sharing(|| postcard::to_stdvec(&b).unwrap());
        assert!(!SHARING.get());
        assert_eq!(take_made(before).len(), 1);
    }
}

//! Tasks for the large-payload tests: `Bytes` through shared memory.

use procpool::Bytes;
use serde::{Deserialize, Serialize, Serializer};

/// Its argument, back.
pub fn echo_bytes(b: Bytes) -> Bytes {
    b
}

/// `len` bytes of a pattern that `seed` changes.
pub fn pattern_bytes(len: u64, seed: u64) -> Bytes {
    Bytes::from(pattern(len as usize, seed))
}

/// The pattern [`pattern_bytes`] makes, on the test's side.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i as u64)
                .wrapping_mul(31)
                .wrapping_add(seed * 7 + i as u64 / 4093)) as u8
        })
        .collect()
}

/// FNV-1a of the bytes.
pub fn digest(b: Bytes) -> u64 {
    digest_of(&b)
}

/// FNV-1a, on the test's side.
pub fn digest_of(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How many payload memfds this process has open (descriptors) and
/// mapped (mappings), by their name.
pub fn payload_memfds() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("procpool-payload"))
                })
                .count()
        })
        .unwrap_or(0);
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().filter(|l| l.contains("procpool-payload")).count())
        .unwrap_or(0);
    (fds, maps)
}

/// What a marker naming descriptor `fd` of this process, `len` bytes,
/// looks like (the format `payload.rs` writes: a magic, the pool's key,
/// pid, descriptor, length), for a worker that lies. The key is this
/// process's `PROCPOOL_SHARE_KEY` as it was started (a worker's pool gave
/// it one; a test process has none, and its marker is then a look-alike
/// with key 0).
pub fn forged_marker(fd: u32, len: u64) -> Bytes {
    marker_with(share_key(), std::process::id(), fd, len)
}

/// A marker's 32 bytes.
fn marker_with(key: u64, pid: u32, fd: u32, len: u64) -> Bytes {
    let mut m = b"\0ppmemfd".to_vec();
    m.extend_from_slice(&key.to_le_bytes());
    m.extend_from_slice(&pid.to_le_bytes());
    m.extend_from_slice(&fd.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    Bytes::from(m)
}

/// The key this process was started with (its initial environment, which
/// the worker runtime's clean-up does not reach), or 0.
fn share_key() -> u64 {
    std::fs::read("/proc/self/environ")
        .ok()
        .and_then(|env| {
            env.split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(b"PROCPOOL_SHARE_KEY=").map(<[u8]>::to_vec))
        })
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// A worker that lies: lists its descriptor 0 (`/dev/null`) as a shared
/// payload, then returns a marker naming it.
pub fn forge_after_listing_zero() -> Bytes {
    let mut frame = Vec::new();
    procpool_protocol::encode_message(
        &mut frame,
        &procpool_protocol::FromWorker::Shared { fds: vec![0] },
        procpool_protocol::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    crate::wire_write(frame, crate::Then::Return);
    forged_marker(0, 2 << 20)
}

// ---------------------------------------------------------------------
// Tasks for the hostile review of shared payloads
// (`tests/integration/review_shm.rs`).
// ---------------------------------------------------------------------

/// A hostile worker: makes a FIFO at `path`, opens it for reading without
/// blocking (so it has a reader and no writer), lists that descriptor as
/// a shared payload, and returns 0. Anyone who opens it for reading
/// without `O_NONBLOCK` waits for a writer.
pub fn list_fifo(path: String) -> u64 {
    let c = std::ffi::CString::new(path).expect("a path without NUL");
    // SAFETY: mkfifo and open read a NUL-terminated path; the descriptor
    // is left open on purpose for the worker's life.
    let fd = unsafe {
        assert_eq!(libc::mkfifo(c.as_ptr(), 0o600), 0, "mkfifo");
        libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK)
    };
    assert!(fd >= 0, "open the FIFO");
    let mut frame = Vec::new();
    procpool_protocol::encode_message(
        &mut frame,
        &procpool_protocol::FromWorker::Shared {
            fds: vec![fd as u32],
        },
        procpool_protocol::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    crate::wire_write(frame, crate::Then::Return)
}

/// A large pattern (through shared memory) and, beside it, a small
/// user payload that happens to look like a marker (naming pid 1,
/// descriptor 0, 5 bytes): both are plain results of the task.
pub fn big_and_marker_shaped(len: u64) -> (Bytes, Bytes) {
    (pattern_bytes(len, 3), marker_with(0, 1, 0, 5))
}

/// Returns a large pattern, and has a thread SIGKILL this worker the
/// moment the result's frame is in the pipe (bytes wait on its protocol
/// descriptor), before the pool has read it: a crash right after a
/// result was sent. The thread may be held up between its look and its
/// kill, and kill later: use a worker that runs no task after this one
/// (`max_tasks_per_worker(1)`).
pub fn big_then_killed(len: u64) -> Bytes {
    std::thread::spawn(|| {
        loop {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer.
            let r = unsafe { libc::ioctl(4, libc::FIONREAD, &mut n) };
            // The `Done` frame holds the 32-byte marker; the `Shared`
            // message before it is shorter, and the pool has read it
            // before the worker writes the frame. More than a page is the
            // result itself on the pipe (shared memory was refused, a
            // fallback this test is not about): then let it finish.
            if r == 0 && (32..4096).contains(&n) {
                // SAFETY: raise only delivers a signal to this process.
                unsafe {
                    libc::raise(libc::SIGKILL);
                }
            }
            std::hint::spin_loop();
        }
    });
    pattern_bytes(len, 5)
}

/// `n` large patterns of `len` bytes each, in one result.
pub fn many_large(n: u64, len: u64) -> Vec<Bytes> {
    (0..n).map(|s| pattern_bytes(len, s)).collect()
}

/// An argument whose encoding, in the caller, panics after its large
/// `Bytes` was encoded.
#[derive(Debug, Deserialize)]
pub struct PanicsAfterBytes(pub Bytes, pub u8);

impl Serialize for PanicsAfterBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTupleStruct;
        let mut t = s.serialize_tuple_struct("PanicsAfterBytes", 2)?;
        t.serialize_field(&self.0)?;
        panic!("PanicsAfterBytes panics while it is encoded");
    }
}

/// The length of the `Bytes` inside (never runs: the caller panics).
pub fn takes_panics_after_bytes(x: PanicsAfterBytes) -> u64 {
    x.0.len() as u64 + u64::from(x.1)
}

/// A result mixing large and small payloads in several shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mixed {
    /// Two MiB and one byte: shared.
    pub big: Bytes,
    /// A hundred bytes: on the pipe.
    pub small: Bytes,
    /// One MiB exactly: shared.
    pub maybe: Option<Bytes>,
    /// Nothing.
    pub none: Option<Bytes>,
    /// One byte under the threshold, one over, and an empty one.
    pub list: Vec<Bytes>,
    /// Three MiB in a `Result`.
    pub either: Result<Bytes, String>,
    /// The seed it was made from.
    pub tail: u64,
}

/// A [`Mixed`] made from `seed`: the same on both sides.
pub fn mixed_of(seed: u64) -> Mixed {
    const MIB: usize = 1 << 20;
    Mixed {
        big: Bytes::from(pattern(2 * MIB + 1, seed)),
        small: Bytes::from(pattern(100, seed + 1)),
        maybe: Some(Bytes::from(pattern(MIB, seed + 2))),
        none: None,
        list: vec![
            Bytes::from(pattern(MIB - 1, seed + 3)),
            Bytes::from(pattern(MIB + 5, seed + 4)),
            Bytes::new(),
        ],
        either: Ok(Bytes::from(pattern(3 * MIB, seed + 5))),
        tail: seed,
    }
}

/// [`mixed_of`], made in the worker.
pub fn mixed(seed: u64) -> Mixed {
    mixed_of(seed)
}

/// Its argument back, checked against [`mixed_of`] on the way.
pub fn echo_mixed(m: Mixed) -> Mixed {
    assert_eq!(m, mixed_of(m.tail), "the argument arrived changed");
    m
}

/// A large `Bytes`, then a value that cannot be encoded: the result
/// fails after its payload was put in shared memory.
pub fn big_then_unencodable(len: u64) -> (Bytes, crate::Unencodable) {
    (pattern_bytes(len, 1), crate::Unencodable)
}

/// Serializes a large `Bytes` with postcard inside the task: how many
/// bytes that made (the payload and its length, never a marker).
pub fn postcard_inside(len: u64) -> u64 {
    postcard::to_stdvec(&pattern_bytes(len, 2)).unwrap().len() as u64
}

// ---------------------------------------------------------------------
// Tasks for the hostile review of the apply fast path
// (`tests/integration/review_perf.rs`).
// ---------------------------------------------------------------------

/// How many payload mappings this worker holds while it holds its
/// argument (a large one counts itself).
pub fn payload_maps_held(b: Bytes) -> u64 {
    let held = payload_memfds().1 as u64;
    drop(b);
    held
}

/// This process's address space, in bytes (`VmSize`).
pub fn vm_size() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

/// The length of its argument.
pub fn bytes_len(b: Bytes) -> u64 {
    b.len() as u64
}

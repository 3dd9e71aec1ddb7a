//! Tasks for the large-payload tests: `Bytes` through shared memory.

use procpool::Bytes;

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
/// looks like (the format `payload.rs` writes): for a worker that lies.
pub fn forged_marker(fd: u32, len: u64) -> Bytes {
    let mut m = b"\0procpool-memfd\0".to_vec();
    m.extend_from_slice(&std::process::id().to_le_bytes());
    m.extend_from_slice(&fd.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    Bytes::from(m)
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

//! Large payloads: a `Bytes` of 1 MiB or more travels through a sealed
//! memfd instead of the pipe, both ways, and nothing of it is left behind.
//!
//! The tests here share one lock: the leak checks count this process's
//! payload memfds, which a concurrent payload test would add to.

use parking_lot::Mutex;
use procpool::{Bytes, Pool};
use procpool_protocol::{DEFAULT_MAX_FRAME, FromWorker, encode_message};
use procpool_tests::{
    Then, digest, digest_of, echo_bytes, forge_after_listing_zero, pattern, pattern_bytes,
    payload_memfds, square, watchdog, wire_write,
};

use crate::{LIMIT, builder, counterless, pool};

pub(crate) static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

/// Sizes around the threshold and well past it.
const SIZES: [usize; 4] = [MIB - 1, MIB, 4 * MIB + 3, 9 * MIB];

fn echo_all(pool: &Pool) {
    for (k, &len) in SIZES.iter().enumerate() {
        let data = pattern(len, k as u64);
        let back = pool.apply(echo_bytes, Bytes::from(data.clone())).unwrap();
        assert_eq!(back.len(), len);
        assert!(back[..] == data[..], "{len} bytes came back changed");
    }
}

#[test]
fn large_bytes_cross_whole_both_ways_through_shared_memory_or_the_pipe() {
    let _w = watchdog("large_bytes_cross_whole", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    echo_all(&pool(2));
    // The same through the pipe.
    echo_all(&builder(2).shared_memory(false).build().unwrap());
    // Workers without a progress page cannot say they take shared
    // arguments, nor answer for shared results: everything on the pipe.
    echo_all(&counterless(1).build().unwrap());
}

#[test]
fn many_large_results_and_arguments_keep_their_order() {
    let _w = watchdog("many_large_results", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(2);
    let seeds: Vec<u64> = (0..12).collect();
    let made: Vec<Bytes> = pool
        .starmap(
            pattern_bytes,
            seeds.iter().map(|&s| (MIB as u64 + s * 1000, s)),
        )
        .unwrap();
    for (s, b) in seeds.iter().zip(&made) {
        assert!(
            b[..] == pattern(MIB + *s as usize * 1000, *s)[..],
            "result {s}"
        );
    }
    // Back as arguments, several to a chunk.
    let digests: Vec<u64> = pool
        .with_chunksize(5)
        .map(digest, made.iter().cloned())
        .unwrap();
    let expected: Vec<u64> = made.iter().map(|b| digest_of(b)).collect();
    assert_eq!(digests, expected);
}

#[test]
fn no_payload_memory_outlives_its_use_in_the_pool_or_the_worker() {
    let _w = watchdog("no_payload_memory_outlives", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    for round in 0..20u64 {
        let back = pool
            .apply(echo_bytes, Bytes::from(pattern(2 * MIB, round)))
            .unwrap();
        assert_eq!(digest_of(&back), digest_of(&pattern(2 * MIB, round)));
    }
    // The worker closes a result's memfd at its next frame after the pool
    // said it took it: one more call, then it holds none.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(pool.apply(payload_memfds, ()).unwrap(), (0, 0));
    // A lane call's large arguments are closed by the dispatcher, which
    // takes commands in order: once a `map` (through the dispatcher,
    // submitted after them) is answered, it has closed them.
    assert_eq!(pool.map(square, [2u64]).unwrap(), [4]);
    // Every result dropped: nothing left in this process either.
    assert_eq!(payload_memfds(), (0, 0));
}

#[test]
fn a_large_argument_queued_behind_a_crash_reaches_the_replacement() {
    let _w = watchdog("large_argument_behind_a_crash", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let data = pattern(3 * MIB, 9);
    let crash = pool.apply_async(procpool_tests::exit_with, 3).unwrap();
    let queued = pool.apply_async(digest, Bytes::from(data.clone())).unwrap();
    assert!(crash.get().unwrap_err().is_worker_died());
    assert_eq!(queued.get().unwrap(), digest_of(&data));
    drop(pool);
    assert_eq!(payload_memfds(), (0, 0));
}

/// A frame listing `fds` as shared payloads.
fn shared_frame(fds: Vec<u32>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(&mut out, &FromWorker::Shared { fds }, DEFAULT_MAX_FRAME).unwrap();
    out
}

#[test]
fn a_worker_that_lists_what_is_no_sealed_memfd_costs_only_the_result_that_names_it() {
    let _w = watchdog("lists_what_is_no_sealed_memfd", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let victim = pool.worker_pids()[0];
    // Listed, then not named: harmless.
    let frame = shared_frame(vec![0, 1, 2]);
    assert_eq!(pool.apply(wire_write, (frame, Then::Return)).unwrap(), 0);
    // Listed, then named by the result that follows (a marker the worker
    // forged): that result fails to decode, with the reason; the worker
    // stays.
    let err = pool
        .apply(forge_after_listing_zero, ())
        .map(|b: Bytes| b.len())
        .unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert!(err.to_string().contains("not a memfd"), "{err}");
    assert_eq!(pool.worker_pids(), vec![victim]);
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    // More descriptors than one frame may list: a protocol violation, the
    // worker is replaced, the pool goes on.
    let frame = shared_frame((0..65).collect());
    let err = pool.apply(wire_write, (frame, Then::Return)).unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert_ne!(pool.worker_pids(), vec![victim]);
}

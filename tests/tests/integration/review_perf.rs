//! A hostile review of the apply fast path: the slot a job of one item
//! gets its message in, the large arguments closed by the dispatcher and
//! unmapped late by the worker, guided chunk sizes. On real processes.
//!
//! Every test here that counts payload memfds holds the lock of
//! `payloads.rs`: another payload test would add to the count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use procpool::Bytes;
use procpool_tests::{
    bytes_len, digest, digest_of, exit_with, pattern, pattern_bytes, payload_maps_held,
    payload_memfds, sleep_ms, square, vm_size, watchdog,
};

use crate::payloads::ONE_AT_A_TIME;
use crate::{LIMIT, builder, pool};

const MIB: usize = 1 << 20;

/// A worker answering a chunk of several large arguments holds one of
/// them mapped at a time, as it did before unmaps were deferred: each
/// item's mapping goes when the item is done with it, not at the chunk's
/// next answer (which may be the whole chunk away).
#[test]
fn a_chunk_of_large_arguments_is_unmapped_item_by_item() {
    let _w = watchdog("chunk_unmapped_item_by_item", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let args: Vec<Bytes> = (0..8).map(|s| Bytes::from(pattern(2 * MIB, s))).collect();
    let held: Vec<u64> = pool.with_chunksize(8).map(payload_maps_held, args).unwrap();
    // Its own argument, and nothing left over from the items before it.
    assert_eq!(held, vec![1; 8], "mappings held while each item ran");
}

/// The same seen as a real failure: under a worker memory limit that an
/// argument fits with room to spare, a chunk of such arguments fails
/// once the mappings of the items already done add up past the limit.
#[test]
fn a_chunk_of_large_arguments_fits_a_memory_limit_one_argument_fits() {
    let _w = watchdog("chunk_fits_memory_limit", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    const ARG: usize = 32 * MIB;
    // What a worker's address space is before it maps anything large.
    let base = pool(1).apply(vm_size, ()).unwrap();
    assert!(base > 0);
    let limited = builder(1)
        .worker_memory_limit(base + 3 * ARG as u64)
        .build()
        .unwrap();
    let args: Vec<Bytes> = (0..12).map(|s| Bytes::from(pattern(ARG, s))).collect();
    let lens = limited
        .with_chunksize(12)
        .map(bytes_len, args)
        .map_err(|e| e.to_string());
    assert_eq!(lens, Ok(vec![ARG as u64; 12]));
}

/// A detached `apply_async` whose result is large: nothing of it is kept
/// once its task is done, even while a cancel handle of it lives (the
/// handle "does not keep the work alive").
#[test]
fn a_detached_large_result_is_not_kept_by_a_cancel_handle() {
    let _w = watchdog("detached_result_cancel_handle", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let r = pool
        .apply_async(pattern_bytes, (4 * MIB as u64, 3))
        .unwrap();
    let handle = r.cancel_handle();
    drop(r);
    pool.close();
    pool.join();
    let left = payload_memfds();
    drop(handle);
    assert_eq!(
        left,
        (0, 0),
        "the result's memfd and mapping, kept by a cancel handle"
    );
    assert_eq!(payload_memfds(), (0, 0));
}

/// After `apply` with a large argument returns, the pool may still hold
/// that argument's memfd for a moment: the dispatcher closes it
/// (`Command::Release`), off the caller's path. Not a leak: they never
/// pile up, and none is left once the dispatcher has caught up (here, a
/// `join`, which it handles after every release sent before it).
#[test]
fn a_large_argument_of_apply_is_closed_by_the_dispatcher_soon_after() {
    let _w = watchdog("large_argument_closed_soon_after", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let data = Bytes::from(pattern(2 * MIB, 5));
    let want = digest_of(&data);
    let mut most = 0;
    for _ in 0..100 {
        assert_eq!(pool.apply(digest, data.clone()).unwrap(), want);
        most = most.max(payload_memfds().0);
    }
    assert!(most <= 2, "{most} argument memfds open at once");
    pool.close();
    pool.join();
    assert_eq!(payload_memfds(), (0, 0));
}

/// Many threads of single-item calls, mixing every way to wait, deadlines,
/// cancels, crashes, drops before the answer and a terminate: each call
/// ends in exactly one outcome and none hangs (a second message for a job
/// of one item trips a debug assertion in the dispatcher, which breaks
/// the pool: every later call would then fail).
#[test]
fn single_item_jobs_end_once_under_every_kind_of_wait_and_fault() {
    let _w = watchdog("single_item_jobs_end_once", LIMIT * 2);
    let pool = Arc::new(builder(2).build().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let pool = pool.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 150 {
                    i += 1;
                    let n = t * 1000 + i;
                    match (t + i) % 9 {
                        0 => assert_eq!(pool.apply(square, n).unwrap(), n * n),
                        1 => {
                            let mut r = pool.apply_async(square, n).unwrap();
                            while !r.ready() {
                                std::thread::yield_now();
                            }
                            assert_eq!(r.get().unwrap(), n * n);
                        }
                        2 => {
                            let mut r = pool.apply_async(sleep_ms, 3).unwrap();
                            let first = r.get_timeout(Duration::from_micros(100));
                            match first {
                                Ok(_) => assert!(r.get_timeout(Duration::ZERO).is_err()),
                                Err(e) => {
                                    assert!(e.is_wait_timeout(), "{e}");
                                    r.get_timeout(Duration::from_secs(30)).unwrap();
                                }
                            }
                        }
                        3 => {
                            let r = pool.apply_async(square, n).unwrap();
                            assert_eq!(futures::executor::block_on(r).unwrap(), n * n);
                        }
                        4 => {
                            let (tx, rx) = std::sync::mpsc::channel();
                            pool.apply_async(square, n).unwrap().on_complete(move |r| {
                                tx.send(r.map_err(|e| e.to_string())).unwrap()
                            });
                            assert_eq!(
                                rx.recv_timeout(Duration::from_secs(30)).unwrap(),
                                Ok(n * n)
                            );
                        }
                        5 => {
                            let r = pool.apply_async(sleep_ms, 5).unwrap();
                            r.cancel();
                            r.cancel();
                            match r.get() {
                                Ok(_) => {}
                                Err(e) => assert!(e.is_cancelled(), "{e}"),
                            }
                        }
                        6 => {
                            let e = pool
                                .with_timeout(Duration::from_millis(1))
                                .apply_async(sleep_ms, 200)
                                .unwrap()
                                .get()
                                .unwrap_err();
                            // Also when the deadline finds the item not yet
                            // started and the worker starts it just before
                            // the kill's halt mark (this test caught that
                            // ending as a worker killed by SIGTERM).
                            assert!(e.is_timeout(), "{e}");
                        }
                        7 => {
                            let e = pool.apply_async(exit_with, 3).unwrap().get().unwrap_err();
                            assert!(e.is_worker_died(), "{e}");
                        }
                        _ => drop(pool.apply_async(square, n).unwrap()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Still whole: no debug assertion broke the dispatcher.
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    // A terminate while callers wait: each ends, with an error.
    let waiting: Vec<_> = (0..4)
        .map(|_| pool.apply_async(sleep_ms, 10_000).unwrap())
        .collect();
    let pending = pool.apply_async(square, 3).unwrap();
    pool.terminate();
    for r in waiting {
        assert!(r.get().is_err());
    }
    let _ = pending.get();
    stop.store(true, Ordering::Relaxed);
}

//! A hostile review of the bounded spin's lane mark, the worker's wait for
//! the pool to take its shared results, and the argument sharing gate.
//!
//! A worker closes a large result's memfds as soon as the pool has said it
//! took them, before it writes the `Done` frame; only when its patience
//! (2 s) runs out does it write the frame first and keep the memfds. So a
//! worker that still holds a payload memfd once its caller has the result
//! is one the pool left waiting: the checks below need no clock.
//!
//! Tests marked BUG fail and say what they prove; the others pin down
//! behaviour that was checked and found right.

use std::time::Duration;

use procpool::{Bytes, Pool, StartMethod};
use procpool_tests::{
    digest, digest_of, fd_table, pattern, pattern_bytes, square, temp_path, watchdog,
};

use crate::payloads::ONE_AT_A_TIME;
use crate::{FAULT_WORKER, LIMIT, builder, pool};

const MIB: usize = 1 << 20;

/// Payload memfds open in process `pid`, read from outside.
fn payload_fds_of(pid: u32) -> Vec<String> {
    fd_table(pid)
        .into_iter()
        .filter(|l| l.contains("procpool-payload"))
        .collect()
}

fn no_result_left_waiting(pool: &Pool, what: &str) {
    for pid in pool.worker_pids() {
        let held = payload_fds_of(pid);
        assert!(
            held.is_empty(),
            "{what}: worker {pid} still holds {held:?}: the pool did not take its \
             shared results before the worker gave up waiting"
        );
    }
}

/// The direct lane (a blocking `apply`) reads the worker's `Shared`
/// message and answers it at once.
#[test]
fn the_lane_takes_shared_results_without_making_the_worker_wait() {
    let _w = watchdog("lane_takes_shared_results", LIMIT);
    // Its payload memfds would show in other tests' counts.
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    for seed in 0..10u64 {
        let b = pool.apply(pattern_bytes, (2 * MIB as u64, seed)).unwrap();
        assert!(b[..] == pattern(2 * MIB, seed)[..], "result {seed}");
        no_result_left_waiting(&pool, "apply");
    }
}

/// The loop: `map` with chunks of one, `imap` whose caller holds results
/// back, a deadline (eager batches), recycling after every task.
#[test]
fn the_loop_takes_shared_results_on_every_path() {
    let _w = watchdog("loop_takes_shared_results", LIMIT);
    // Its payload memfds would show in other tests' counts.
    let _one = ONE_AT_A_TIME.lock();
    let seeds = 0..8u64;
    let check = |got: Vec<Bytes>| {
        for (s, b) in seeds.clone().zip(got) {
            assert!(b[..] == pattern(MIB + s as usize, s)[..], "result {s}");
        }
    };
    let args = || seeds.clone().map(|s| (MIB as u64 + s, s));
    let p = pool(1);
    check(p.with_chunksize(1).starmap(pattern_bytes, args()).unwrap());
    no_result_left_waiting(&p, "starmap");
    // An imap whose caller takes one result at a time.
    let mut it = p.with_chunksize(1).imap(pattern_bytes, args()).unwrap();
    let first = it.next().unwrap().unwrap();
    assert!(first[..] == pattern(MIB, 0)[..]);
    let rest: Vec<Bytes> = it.map(Result::unwrap).collect();
    assert_eq!(rest.len(), 7);
    no_result_left_waiting(&p, "imap");

    let p = builder(1)
        .task_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    check(p.with_chunksize(4).starmap(pattern_bytes, args()).unwrap());
    no_result_left_waiting(&p, "deadline");

    let p = builder(1).max_tasks_per_worker(1).build().unwrap();
    for (s, a) in args().enumerate() {
        let b = p.apply(pattern_bytes, a).unwrap();
        assert!(b[..] == pattern(MIB + s, s as u64)[..]);
    }
}

/// Forked workers (zygote) share results the same way.
#[test]
fn zygote_workers_share_results_without_waiting() {
    let _w = watchdog("zygote_workers_share_results", LIMIT);
    // Its payload memfds would show in other tests' counts.
    let _one = ONE_AT_A_TIME.lock();
    let pool = builder(1)
        .start_method(StartMethod::Zygote)
        .build()
        .unwrap();
    for seed in 0..5u64 {
        let b = pool.apply(pattern_bytes, (2 * MIB as u64, seed)).unwrap();
        assert!(b[..] == pattern(2 * MIB, seed)[..]);
        let m = pool
            .with_chunksize(1)
            .starmap(pattern_bytes, [(MIB as u64, seed), (MIB as u64 + 1, seed)])
            .unwrap();
        assert_eq!(m[1].len(), MIB + 1);
        no_result_left_waiting(&pool, "zygote");
    }
}

/// FIXED (was a bug; a worker without the key now fails such an item,
/// saying why, instead of taking the marker for its argument): the
/// argument sharing gate is read when an argument is encoded,
/// not when it is sent. A pool whose first worker takes large arguments
/// from shared memory encodes them as markers; a replacement that does not
/// (its launcher gave it no key: here the second start of the program
/// strips `PROCPOOL_SHARE_KEY`) gets an argument queued before it became
/// ready as a marker all the same. Without the key it cannot tell a
/// marker from bytes: the task runs on the marker's 32 bytes and returns a
/// wrong result, with no error anywhere.
#[test]
fn a_large_argument_queued_for_a_replacement_without_the_key_is_not_corrupted() {
    let _w = watchdog("argument_for_keyless_replacement", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let flag = temp_path("review-final-keyless");
    let _ = std::fs::remove_file(&flag);
    let script = format!(
        "if [ -e '{f}' ]; then exec env -u PROCPOOL_SHARE_KEY \"$0\"; \
         else : > '{f}'; exec \"$0\"; fi",
        f = flag.display()
    );
    let pool = Pool::builder()
        .workers(1)
        .worker_program("/bin/sh")
        .worker_args([
            std::ffi::OsString::from("-c"),
            script.into(),
            FAULT_WORKER.into(),
        ])
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let data = pattern(2 * MIB, 5);
    let crash = pool.apply_async(procpool_tests::exit_with, 3).unwrap();
    let queued = pool.apply_async(digest, Bytes::from(data.clone())).unwrap();
    assert!(crash.get().unwrap_err().is_worker_died());
    let got = queued.get();
    let _ = std::fs::remove_file(&flag);
    // A clear error would do; a wrong answer does not.
    match got {
        Ok(d) => assert_eq!(d, digest_of(&data), "the task ran on a different argument"),
        Err(e) => assert!(e.to_string().contains("PROCPOOL_SHARE_KEY"), "{e}"),
    }
}

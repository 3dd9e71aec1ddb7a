//! A hostile review of large payloads through sealed memfds (`Bytes` of
//! 1 MiB or more between the pool and its workers), on real processes.
//!
//! Each test marked BUG fails and says what it proves; those marked FIXED
//! failed before the small fixes that followed them; the others pin down
//! behaviour the review checked and found right. Every test here holds
//! the lock of `payloads.rs`: the tests that count this process's payload
//! memfds would otherwise count another test's too.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use procpool::{Bytes, Pool, StartMethod};
use procpool_tests::{
    PanicsAfterBytes, big_and_marker_shaped, big_then_killed, big_then_unencodable, digest,
    digest_of, echo_bytes, echo_mixed, fd_table, forged_marker, list_fifo, many_large, mixed,
    mixed_of, pattern, pattern_bytes, payload_memfds, postcard_inside, square,
    takes_panics_after_bytes, temp_path, watchdog,
};

use crate::payloads::ONE_AT_A_TIME;
use crate::{FAULT_WORKER, LIMIT, builder, pool};

const MIB: usize = 1 << 20;

/// Payload memfds open in process `pid`, read from outside.
fn payload_fds_of(pid: u32) -> usize {
    fd_table(pid)
        .iter()
        .filter(|l| l.contains("procpool-payload"))
        .count()
}

/// Opens the FIFO at `path` for writing when dropped, which releases
/// anyone blocked opening it for reading.
struct Unstick(std::path::PathBuf);

impl Drop for Unstick {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// FIXED (was a bug; `open_sealed` now looks before it opens): a hostile
/// worker lists, as a shared payload, a FIFO it holds open
/// for reading (no writer). The pool opens `/proc/<pid>/fd/<n>` for
/// reading without `O_NONBLOCK` and before it checks what the file is, so
/// the open waits for a writer that never comes: the dispatcher thread is
/// stuck in `open(2)`, and with it every caller of the pool, on every
/// worker; no deadline fires. A bad listing should cost a typed error
/// (the `not a memfd` it gives for other files), not the whole pool.
/// (The test opens the FIFO for writing at the end, which releases it.)
#[test]
fn a_worker_listing_a_fifo_does_not_freeze_the_pool() {
    let _w = watchdog("listing_a_fifo_freezes", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = builder(2)
        .task_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let path = temp_path("review-shm-fifo");
    let unstick = Unstick(path.clone());
    let (tx, rx) = mpsc::channel();
    let (got, other) = std::thread::scope(|s| {
        let tx1 = tx.clone();
        let path = path.display().to_string();
        let pool = &pool;
        s.spawn(move || {
            let r = pool.apply_async(list_fifo, path).unwrap().get();
            let _ = tx1.send(("fifo", r.map_err(|e| e.to_string())));
        });
        // Once the listing is in, work for the other worker.
        std::thread::sleep(Duration::from_millis(1000));
        s.spawn(move || {
            let r = pool.apply_async(square, 7).unwrap().get();
            let _ = tx.send(("square", r.map_err(|e| e.to_string())));
        });
        let mut got = None;
        let mut other = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while got.is_none() || other.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(("fifo", r)) => got = Some(r),
                Ok((_, r)) => other = Some(r),
                Err(_) => break,
            }
        }
        // Release the pool (and so the threads above) before asserting.
        drop(unstick);
        (got, other)
    });
    assert!(
        got.is_some(),
        "the task listing a FIFO had no outcome within 15 s (the pool was stuck opening it)"
    );
    assert_eq!(
        other,
        Some(Ok(49)),
        "another worker's task had no outcome within 14 s"
    );
}

/// FIXED (was a bug; markers carry the pool's key now, and only one
/// with it resolves): a caller's own small `Bytes` that happens to look like a marker
/// (the 16-byte magic, then any pid, descriptor and length) is taken for
/// one by the worker, which decodes every argument with markers resolved:
/// it opens `/proc/<pid>/fd/<n>` as the bytes say, and the task fails
/// (`cannot open the shared payload ...`) instead of getting its 32 bytes.
/// Only a marker the pool itself wrote should resolve.
#[test]
fn a_marker_shaped_small_argument_arrives_unchanged() {
    let _w = watchdog("marker_shaped_argument", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let shaped = forged_marker(0, 5);
    let back = pool.apply(echo_bytes, shaped.clone());
    assert_eq!(back.map_err(|e| e.to_string()), Ok(shaped));
}

/// FIXED (was a bug): worse than a failure, a marker-shaped argument naming a sealed
/// memfd that the caller's process holds is silently replaced by that
/// memfd's contents: the task gets other bytes than it was given (here
/// `secret`, from a memfd unrelated to the call).
#[test]
fn a_marker_shaped_argument_is_not_replaced_by_another_memfds_contents() {
    let _w = watchdog("marker_shaped_substituted", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    // A sealed memfd of this process, as any library might hold.
    // SAFETY: memfd_create reads a NUL-terminated name; the descriptor is
    // owned at once; write and fcntl touch only it.
    let fd = unsafe {
        let raw = libc::memfd_create(c"unrelated".as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(raw >= 0);
        let fd = OwnedFd::from_raw_fd(raw);
        assert_eq!(libc::write(raw, b"secret".as_ptr().cast(), 6), 6);
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        assert_eq!(libc::fcntl(raw, libc::F_ADD_SEALS, seals), 0);
        fd
    };
    let shaped = forged_marker(fd.as_raw_fd() as u32, 6);
    let back = pool.apply(echo_bytes, shaped.clone()).unwrap();
    assert_ne!(&back[..], b"secret", "the worker read another memfd");
    assert_eq!(back, shaped);
}

/// FIXED (was a bug): a task's small marker-shaped `Bytes` result arrives unchanged on
/// its own, but fails to decode (`a shared payload names process 1, not
/// its worker ...`) when a large result shares its frame: the pool
/// resolves every marker-shaped byte string of a frame that came with
/// shared payloads. A result must not depend on its neighbours.
#[test]
fn a_marker_shaped_result_beside_a_large_one_arrives_unchanged() {
    let _w = watchdog("marker_shaped_result", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    // Alone in its frame: plain bytes (passes).
    let alone: Bytes = pool.apply(forged_marker, (0u32, 5u64)).unwrap();
    assert_eq!(alone.len(), 32);
    // Beside a large result.
    let (big, shaped) = big_and_marker_shaped(MIB as u64);
    let back = pool
        .apply(big_and_marker_shaped, MIB as u64)
        .map(|(b, m)| (b == big, m))
        .map_err(|e| e.to_string());
    assert_eq!(back, Ok((true, shaped)));
}

/// FIXED (was a bug; the worker now waits for the pool to take its
/// memfds before it writes the `Done` frame; the crate docs promised the opposite: "The sender keeps its copy
/// until the receiver has opened it, so a crash loses no result that was
/// sent"): a worker whose large result is wholly in the pipe (its
/// `Shared` message and `Done` frame, one small write) and that is
/// SIGKILLed before the pool reads it loses that result: its memfd died
/// with it, and the pool cannot open `/proc/<pid>/fd/<n>` of a dead
/// process, so the caller gets an error for a task that finished. Through
/// the pipe the same result would have arrived.
#[test]
fn a_large_result_sent_before_its_worker_is_killed_is_not_lost() {
    let _w = watchdog("large_result_then_killed", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    // One task per worker: the task's killer thread looks at the pipe,
    // then kills, and in between the pool may have read the result and
    // given the worker its next task, which a late kill would end (a
    // death while running, rightly reported as one). A worker that takes
    // no next task leaves a late kill nothing to hit.
    let pool = builder(1).max_tasks_per_worker(1).build().unwrap();
    let expected = pattern(2 * MIB, 5);
    // The race (the pool reads the pipe before the kill lands) goes the
    // pool's way now and then: one lost result in twenty tries is the bug.
    let mut lost = Vec::new();
    for attempt in 0..20 {
        match pool.apply(big_then_killed, 2 * MIB as u64) {
            Ok(b) => assert!(b[..] == expected[..], "attempt {attempt}: changed"),
            Err(e) => lost.push(format!("attempt {attempt}: {e}")),
        }
    }
    assert!(lost.is_empty(), "results lost: {lost:#?}");
}

/// FIXED (was a bug; a value now shares at most 64, the rest stays on
/// the stream): a legitimate result holding more than 64 large `Bytes` (here 65
/// of 1 MiB: a 65 MiB `Vec<Bytes>`, whose frame is a few kilobytes of
/// markers) makes its own worker list 65 memfds ahead of one frame, which
/// the pool treats as a protocol violation: the worker is killed and the
/// caller gets a protocol error. The worker flushes early between items,
/// never inside one; a single result must not break the protocol.
#[test]
fn a_result_of_more_than_64_large_bytes_is_no_protocol_violation() {
    let _w = watchdog("result_of_65_large", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let back = pool
        .apply(many_large, (65u64, MIB as u64))
        .map(|v| v.len())
        .map_err(|e| e.to_string());
    assert_eq!(back, Ok(65));
}

/// FIXED (was a leak; `sharing` now drops what it made on unwind): an
/// argument whose `Serialize` panics after a large `Bytes`
/// of it was put in a memfd (a caller that catches the panic goes on)
/// leaves that memfd in the calling thread's list of made payloads for
/// the life of the thread: `sharing` restores its flag on unwind, but
/// nothing takes the memfds made before the panic. One leaked descriptor
/// and 4 MiB per such call.
#[test]
fn a_panic_while_encoding_an_argument_leaks_no_memfd() {
    let _w = watchdog("panic_encoding_argument", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let before = payload_memfds();
    let arg = PanicsAfterBytes(Bytes::from(pattern(4 * MIB, 1)), 0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.apply(takes_panics_after_bytes, arg)
    }));
    assert!(caught.is_err(), "the argument's encoding panics");
    // The pool goes on.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(payload_memfds(), before, "a payload memfd was left behind");
}

/// FIXED (was a bug; memory kept; the worker closes its memfds as soon
/// as the pool took them): a worker closes a large result's memfd only when it
/// sends its next frame, so an idle worker keeps its last large result's
/// memory for as long as it stays idle, after the pool took it and after
/// the caller dropped it (a 2 MiB result here; a worker that returned
/// 1 GiB keeps 1 GiB). The crate docs say the memory goes with the last
/// process that holds it; here the holder is a worker that no longer
/// needs it.
#[test]
fn an_idle_worker_keeps_no_payload_memfd_after_its_result_was_taken() {
    let _w = watchdog("idle_worker_keeps_memfd", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let worker = pool.worker_pids()[0];
    let back = pool.apply(pattern_bytes, (2 * MIB as u64, 4)).unwrap();
    assert_eq!(back.len(), 2 * MIB);
    drop(back);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        payload_fds_of(worker),
        0,
        "the idle worker still holds its result's memfd: {:?}",
        fd_table(worker)
    );
}

/// FIXED (was a regression; the pool shares arguments only while every
/// worker says, in its progress page, that it takes them): a worker started through a launcher that gives it no
/// access to the pool's descriptors (here `setpriv` to another user, a
/// common way to sandbox the tasks; the same holds in another pid
/// namespace or host) cannot open `/proc/<pool>/fd/<n>`. Its results
/// stay on the pipe (it has no progress page), but the pool still sends
/// it every large argument as a marker, so each one fails to decode
/// (`Permission denied`); before shared memory they simply worked. The
/// pool should keep arguments on the pipe for a worker that cannot take
/// them from shared memory (it already does so for its results).
#[test]
fn a_worker_that_cannot_open_the_pools_descriptors_still_gets_large_arguments() {
    let _w = watchdog("sandboxed_worker_large_argument", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = Pool::builder()
        .workers(1)
        .worker_program("/usr/bin/setpriv")
        .worker_args([
            std::ffi::OsString::from("--reuid=65534"),
            "--regid=65534".into(),
            "--clear-groups".into(),
            "/usr/bin/env".into(),
            "-u".into(),
            "PROCPOOL_PROGRESS".into(),
            FAULT_WORKER.into(),
        ])
        .build()
        .unwrap();
    // Small arguments and large results work.
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
    let made = pool.apply(pattern_bytes, (2 * MIB as u64, 1)).unwrap();
    assert!(made[..] == pattern(2 * MIB, 1)[..]);
    // A large argument.
    let data = pattern(2 * MIB, 2);
    let got = pool
        .apply(digest, Bytes::from(data.clone()))
        .map_err(|e| e.to_string());
    assert_eq!(got, Ok(digest_of(&data)));
}

// ---------------------------------------------------------------------
// Checked and found right.
// ---------------------------------------------------------------------

fn mixed_both_ways(pool: &Pool) {
    assert_eq!(pool.apply(mixed, 7).unwrap(), mixed_of(7));
    assert_eq!(pool.apply(echo_mixed, mixed_of(9)).unwrap(), mixed_of(9));
    let all: Vec<_> = pool
        .with_chunksize(2)
        .map(echo_mixed, (0..5).map(mixed_of))
        .unwrap();
    assert_eq!(all, (0..5).map(mixed_of).collect::<Vec<_>>());
}

/// Large and small `Bytes` in a struct, an `Option`, a `Vec`, a `Result`,
/// both ways, on exec'd workers, forked (zygote) workers and threads.
#[test]
fn large_and_small_bytes_in_every_shape_cross_both_ways() {
    let _w = watchdog("bytes_in_every_shape", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    mixed_both_ways(&pool(2));
    mixed_both_ways(
        &builder(1)
            .start_method(StartMethod::Zygote)
            .build()
            .unwrap(),
    );
    let threads = Pool::builder()
        .workers(2)
        .in_process(procpool_tests::registry())
        .build()
        .unwrap();
    mixed_both_ways(&threads);
    drop(threads);
    assert_eq!(payload_memfds(), (0, 0));
}

/// A result that fails to encode after its large `Bytes` went to a memfd
/// fails alone, and the worker closes that memfd at once.
#[test]
fn a_result_failing_after_its_large_bytes_leaves_no_memfd_in_the_worker() {
    let _w = watchdog("result_failing_after_large", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    let worker = pool.worker_pids()[0];
    let err = pool
        .apply(big_then_unencodable, 3 * MIB as u64)
        .map(|_| ())
        .unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert_eq!(payload_fds_of(worker), 0, "{:?}", fd_table(worker));
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
}

/// A `Bytes` a task serializes itself, with postcard, is plain bytes.
#[test]
fn postcard_inside_a_task_writes_plain_bytes() {
    let _w = watchdog("postcard_inside_a_task", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    assert_eq!(
        pool.apply(postcard_inside, 2 * MIB as u64).unwrap(),
        2 * MIB as u64 + 4
    );
}

/// `map_async`, `imap_unordered`, `starmap` with large items, on
/// deadlines (eager batches), with workers recycled after every task.
#[test]
fn large_items_through_every_entry_point_on_deadlines_and_recycling() {
    let _w = watchdog("large_items_every_entry_point", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = builder(2)
        .task_timeout(Duration::from_secs(30))
        .max_tasks_per_worker(2)
        .build()
        .unwrap();
    let items: Vec<Vec<u8>> = (0..7).map(|s| pattern(MIB + s * 11, s as u64)).collect();
    let echoed = pool
        .with_chunksize(3)
        .map_async(echo_bytes, items.iter().map(|v| Bytes::from(v.clone())))
        .unwrap()
        .get()
        .unwrap();
    assert!(echoed.iter().zip(&items).all(|(b, v)| b[..] == v[..]));
    let mut digests: Vec<u64> = pool
        .imap_unordered(digest, items.iter().map(|v| Bytes::from(v.clone())))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    digests.sort_unstable();
    let mut expected: Vec<u64> = items.iter().map(|v| digest_of(v)).collect();
    expected.sort_unstable();
    assert_eq!(digests, expected);
    let made: Vec<Bytes> = pool
        .starmap(pattern_bytes, (0..5u64).map(|s| (MIB as u64 + s, s)))
        .unwrap();
    for (s, b) in made.iter().enumerate() {
        assert!(b[..] == pattern(MIB + s, s as u64)[..], "result {s}");
    }
}

/// A large result cancelled before it comes: one outcome, and nothing
/// left in this process once the pool is gone.
#[test]
fn a_cancelled_large_result_leaves_nothing() {
    let _w = watchdog("cancelled_large_result", LIMIT);
    let _one = ONE_AT_A_TIME.lock();
    let pool = pool(1);
    for round in 0..5u64 {
        let r = pool
            .apply_async(pattern_bytes, (4 * MIB as u64, round))
            .unwrap();
        r.cancel();
        match r.get() {
            Ok(b) => assert!(b[..] == pattern(4 * MIB, round)[..]),
            Err(e) => assert!(e.is_cancelled(), "{e}"),
        }
    }
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    drop(pool);
    assert_eq!(payload_memfds(), (0, 0));
}

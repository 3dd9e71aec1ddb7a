//! Edges found in review: closures as tasks, the reason of a broken pool,
//! results and arguments just over the frame limit, panics on threads a
//! task started, deeply nested results and arguments.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{
    DeepList, bytes_of_len, deep_list, deep_list_depth, kill, len_of, panic_in_thread, square,
    temp_path, wait_until, watchdog,
};

use crate::{FAULT_WORKER, LIMIT, pool};

#[test]
fn a_closure_is_refused_at_submit() {
    let _w = watchdog("a_closure_is_refused_at_submit", LIMIT);
    let pool = pool(1);
    // Every closure in this function has the same type name: had a worker
    // served one, this would have run it instead.
    let err = pool.map(|x: u64| x * 100, 0..3).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    assert!(err.is_unknown_task(), "{err}");
    let message = err.to_string();
    assert!(message.contains("is a closure"), "{message}");
    assert!(message.contains("name a `fn`"), "{message}");
    assert!(message.contains("{{closure}}"), "{message}");
    let err = pool.apply(|x: u64| x + 1, 1).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    let p: fn(u64) -> u64 = square;
    let err = pool.apply(p, 2).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    assert!(err.to_string().contains("a function pointer"), "{err}");
    // The function itself, by name, is fine.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[test]
fn a_broken_pool_says_so_once() {
    let _w = watchdog("a_broken_pool_says_so_once", LIMIT);
    let counter = temp_path("broken-once");
    // The first worker starts; every replacement exits with code 7 before
    // its handshake, past the restart limit.
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .worker_args([
            "--crash-at",
            "start",
            "--death",
            "exit:7",
            "--counter",
            &counter.display().to_string(),
            "--skip",
            "1",
        ])
        .restart_limit(1, Duration::from_secs(60))
        .build()
        .unwrap();
    kill(pool.worker_pids()[0], libc::SIGKILL);
    assert!(wait_until(LIMIT, || pool.apply(square, 2).is_err()));
    let err = pool.apply(square, 2).unwrap_err();
    assert!(err.is_broken(), "{err}");
    let message = err.to_string();
    assert_eq!(
        message.matches("the pool is broken").count(),
        1,
        "{message}"
    );
    assert!(
        message.starts_with("the pool is broken: workers failed to start"),
        "{message}"
    );
    pool.terminate();
    let _ = std::fs::remove_file(&counter);
}

/// The frame limit of the pools below, and the largest result a frame of
/// that size holds: 32 bytes of `Done` header, 16 of outcome header.
const SMALL_FRAME: u32 = 64 * 1024;
const RESULT_FITS: usize = SMALL_FRAME as usize - 48;

/// A `Vec<u8>` of `n >= 16384` bytes encodes to `n + 3` (its length as a
/// three-byte varint first).
fn vec_of_encoded_len(encoded: usize) -> u64 {
    (encoded - 3) as u64
}

#[test]
fn a_result_just_over_the_frame_limit_says_what_fits() {
    let _w = watchdog("a_result_just_over_the_frame_limit_says_what_fits", LIMIT);
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .max_frame(SMALL_FRAME)
        .build()
        .unwrap();
    let fits = pool
        .apply(bytes_of_len, vec_of_encoded_len(RESULT_FITS))
        .unwrap();
    assert_eq!(fits.len() + 3, RESULT_FITS);
    let err = pool
        .apply(bytes_of_len, vec_of_encoded_len(RESULT_FITS + 1))
        .unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "the worker cannot encode the result of task `procpool_tests::bytes_of_len`: the \
             result encodes to {} bytes, more than fits in a frame: the frame limit of {} bytes \
             (Builder::max_frame) holds a result of at most {} bytes",
            RESULT_FITS + 1,
            SMALL_FRAME,
            RESULT_FITS
        )
    );
}

#[test]
fn an_argument_just_over_the_frame_limit_names_the_limit() {
    let _w = watchdog(
        "an_argument_just_over_the_frame_limit_names_the_limit",
        LIMIT,
    );
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .max_frame(SMALL_FRAME)
        .build()
        .unwrap();
    // 32 bytes of `Run` header and 8 of item length: 40 bytes of framing.
    let fits = SMALL_FRAME as usize - 40;
    let arg = vec![1u8; vec_of_encoded_len(fits) as usize];
    assert_eq!(pool.apply(len_of, arg).unwrap() as usize + 3, fits);
    let arg = vec![1u8; vec_of_encoded_len(fits + 1) as usize];
    let err = pool.apply(len_of, arg).unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "the argument of task `procpool_tests::len_of` encodes to {} bytes: with its \
             framing, that is over the frame limit of {} bytes (Builder::max_frame)",
            fits + 1,
            SMALL_FRAME
        )
    );
}

#[test]
fn a_panic_on_a_thread_a_task_started_reaches_the_parents_log() {
    let _w = watchdog(
        "a_panic_on_a_thread_a_task_started_reaches_the_parents_log",
        LIMIT,
    );
    crate::logs::install();
    let pool = pool(1);
    let pid = pool.worker_pids()[0];
    // The thread's panic is not the task's: the task returns normally.
    assert!(
        pool.apply(panic_in_thread, "tag-5c1e gave up".to_owned())
            .unwrap()
    );
    let ours: Vec<_> = crate::logs::CAPTURE
        .records
        .lock()
        .iter()
        .filter(|(_, _, m)| m.contains("tag-5c1e"))
        .cloned()
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let (level, _, message) = &ours[0];
    assert_eq!(*level, log::Level::Error);
    let prefix = format!(
        "[worker {pid} `procpool_tests::panic_in_thread`] thread `doomed` panicked at tests/src/lib.rs:"
    );
    let rest = message
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{message:?} does not start with {prefix:?}"));
    // line:column, then the message.
    let (line_col, text) = rest.split_once(": ").expect("a location, then the message");
    assert!(
        line_col.split(':').all(|n| n.parse::<u32>().is_ok()) && line_col.contains(':'),
        "{message}"
    );
    assert_eq!(text, "tag-5c1e gave up");
    // The worker lived on.
    assert_eq!(pool.worker_pids(), vec![pid]);
}

/// 100,000 levels in 100 KB: decoding it recursively needs tens of MB of
/// stack, far more than this test thread's 2 MiB or a worker's 8 MiB.
const DEEP: u64 = 100_000;

#[test]
fn a_deeply_nested_result_decodes_in_the_caller() {
    let _w = watchdog("a_deeply_nested_result_decodes_in_the_caller", LIMIT);
    let pool = pool(1);
    // Decoded on this thread (apply and map decode on the caller's).
    assert_eq!(pool.apply(deep_list, DEEP).unwrap().depth(), DEEP);
    let lists = pool.map(deep_list, [DEEP, 3]).unwrap();
    assert_eq!(
        lists.iter().map(DeepList::depth).collect::<Vec<_>>(),
        [DEEP, 3]
    );
}

#[test]
fn a_deeply_nested_argument_decodes_in_the_worker() {
    let _w = watchdog("a_deeply_nested_argument_decodes_in_the_worker", LIMIT);
    let pool = pool(1);
    let pid = pool.worker_pids()[0];
    assert_eq!(
        pool.apply(deep_list_depth, DeepList::of_depth(DEEP))
            .unwrap(),
        DEEP
    );
    assert_eq!(pool.worker_pids(), vec![pid], "the worker survived");
}

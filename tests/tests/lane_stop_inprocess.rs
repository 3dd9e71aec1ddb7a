//! Review 2 of ede1905: failing tests (real workers).
use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool::Pool;
use procpool_tests::{registry, sleep_ms, square, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

/// In-process mode: a blocking `apply` that took the direct lane is not
/// failed by `terminate()`. Through the dispatcher the same task fails
/// `Terminated` at once; on the lane the caller waits for the task to
/// return (forever, for a hung one) and then gets `Ok` from a pool that
/// was terminated seconds before.
#[test]
fn inprocess_lane_call_is_failed_by_terminate() {
    let _w = watchdog(
        "inprocess_lane_call_is_failed_by_terminate",
        Duration::from_secs(120),
    );
    let pool = Arc::new(
        Pool::builder()
            .workers(1)
            .in_process(registry())
            .kill_grace(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    assert_eq!(pool.apply(square, 3).unwrap(), 9); // lent from now on
    std::thread::sleep(Duration::from_millis(50));
    let p = pool.clone();
    let caller = std::thread::spawn(move || {
        let t = Instant::now();
        let r = p.apply(sleep_ms, 60_000);
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    pool.terminate();
    let took = t.elapsed();
    let (r, waited) = caller.join().unwrap();
    eprintln!("terminate() took {took:?}; the lane caller got {r:?} after {waited:?}");
    assert!(
        matches!(&r, Err(e) if e.is_terminated()),
        "a lane call outlived terminate(): {r:?} after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "the caller waited {waited:?}"
    );
}

/// The same in process mode, as the control: passes.
#[test]
fn process_lane_call_is_failed_by_terminate() {
    let _w = watchdog(
        "process_lane_call_is_failed_by_terminate",
        Duration::from_secs(120),
    );
    let pool = Arc::new(
        Pool::builder()
            .workers(1)
            .worker_program(FAULT_WORKER)
            .kill_grace(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    std::thread::sleep(Duration::from_millis(50));
    let p = pool.clone();
    let caller = std::thread::spawn(move || {
        let t = Instant::now();
        (p.apply(sleep_ms, 60_000), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    pool.terminate();
    let (r, waited) = caller.join().unwrap();
    assert!(matches!(&r, Err(e) if e.is_terminated()), "{r:?}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

/// In-process mode: a worker thread detached at the end of its kill grace
/// (after a deadline) is still running. `lose` reads its progress counter
/// right after detaching it and re-queues every item the counter had not
/// reached yet — but the thread goes on starting the next items of the
/// batch it already read (a non-eager batch flushes only every 20 ms, and
/// only a failed flush stops it). Those items run twice.
#[test]
fn inprocess_detached_thread_runs_requeued_items_again() {
    let _w = watchdog(
        "inprocess_detached_thread_runs_requeued_items_again",
        Duration::from_secs(120),
    );
    let mut all = Vec::new();
    for round in 0..4 {
        let twice = detach_round(round);
        eprintln!("round {round}: ran twice: {twice:?}");
        all.extend(twice);
    }
    assert!(all.is_empty(), "items that ran twice: {all:?}");
}

/// One round; its items are numbered from `round * 10_000`, as a thread
/// detached in an earlier round may still be recording its own items
/// (through the process-wide store `init_store` sets) while this one runs.
fn detach_round(round: u64) -> Vec<u64> {
    let file = procpool_tests::temp_path("record");
    let pool = Pool::builder()
        .workers(1)
        .in_process(registry())
        .initializer(procpool_tests::init_store, file.display().to_string())
        .kill_grace(Duration::from_millis(1000))
        .build()
        .unwrap();
    // D: an eager batch whose item passes its 50 ms deadline but returns
    // at 500 ms, within the kill grace. (Margins of ten times: a loaded
    // machine that delays the dispatcher's deadline by 50 ms made the item
    // return first, and the test fail, when they were 100 and 150 ms.)
    let d = pool
        .with_timeout(Duration::from_millis(50))
        .apply_async(sleep_ms, 500)
        .unwrap();
    // B: one non-eager chunk of 300 items of ~5 ms, pipelined behind D on
    // the same worker; it starts at ~500 ms and is still running when the
    // thread is detached at ~1050 ms.
    let n = 300u64;
    let results: Vec<_> = pool
        .with_chunksize(n as usize)
        .imap(
            procpool_tests::record_then_sleep,
            (0..n).map(|i| (round * 10_000 + i, 5u64)),
        )
        .unwrap()
        .collect();
    let e = d.get().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let counts = procpool_tests::recorded(&file);
    let ours = round * 10_000..round * 10_000 + n;
    let twice: Vec<u64> = counts
        .iter()
        .filter(|&(i, &c)| ours.contains(i) && c > 1)
        .map(|(&i, _)| i)
        .collect();
    eprintln!("{ok} of {n} items succeeded; {} failed", results.len() - ok);
    pool.terminate();
    let _ = std::fs::remove_file(&file);
    twice
}

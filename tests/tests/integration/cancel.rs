//! `cancel()`: an item not yet started never runs; an item running is
//! stopped by killing its worker, which alone is replaced; every item of
//! the job ends once, `is_cancelled` unless it finished first.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use procpool_tests::{
    record, record_then_sleep, recorded, running_task, square, temp_path, wait_until, watchdog,
};

use crate::{LIMIT, pool, recording_pool};

/// Pids that changed between two lists of a pool's workers.
fn replaced(before: &[u32], after: &[u32]) -> usize {
    let after: BTreeSet<_> = after.iter().collect();
    before.iter().filter(|p| !after.contains(p)).count()
}

#[test]
fn cancelling_a_running_task_kills_its_worker_only() {
    let _w = watchdog("cancelling_a_running_task_kills_its_worker_only", LIMIT);
    let pool = pool(2);
    let before = pool.worker_pids();
    let running = running_task(&pool); // sleeps a minute once started
    running.cancel();
    let err = running.get().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(
        wait_until(LIMIT, || {
            let now = pool.worker_pids();
            now.len() == 2 && replaced(&before, &now) == 1
        }),
        "exactly one worker is replaced: {before:?} -> {:?}",
        pool.worker_pids()
    );
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
}

#[test]
fn a_cancelled_job_runs_no_item_it_had_not_started() {
    let _w = watchdog("a_cancelled_job_runs_no_item_it_had_not_started", LIMIT);
    let file = temp_path("cancel-job");
    let pool = recording_pool(2, &file);
    // Each item records itself, then holds its worker for a minute: two run
    // (one per worker), the others wait, queued or pipelined.
    let job = pool
        .with_chunksize(1)
        .map_async(record_then_sleep, (0..20u64).map(|i| (i, 60_000)))
        .unwrap();
    assert!(
        wait_until(LIMIT, || recorded(&file).len() == 2),
        "two items start"
    );
    let started = recorded(&file);
    job.cancel();
    let err = job.get().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    pool.close();
    pool.join();
    assert_eq!(
        recorded(&file),
        started,
        "only the two that had started ever ran"
    );
}

#[test]
fn a_cancelled_imap_yields_each_submitted_item_once_and_pulls_no_more_input() {
    let _w = watchdog("a_cancelled_imap_yields_each_submitted_item_once", LIMIT);
    let file = temp_path("cancel-imap");
    let pool = recording_pool(2, &file);
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let input = (0..1000u64).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let stream = pool
        .with_chunksize(1)
        .imap(record_then_sleep, input.map(|i| (i, 60_000)))
        .unwrap();
    let handle = stream.cancel_handle();
    // The stream is consumed on another thread: it pulls input as it goes.
    let consumer = std::thread::spawn(move || stream.collect::<Vec<_>>());
    assert!(
        wait_until(LIMIT, || recorded(&file).len() == 2),
        "two items start"
    );
    handle.cancel();
    let outcomes = consumer.join().unwrap();
    let submitted = pulled.load(Ordering::SeqCst);
    assert_eq!(
        outcomes.len() as u64,
        submitted,
        "one outcome per submitted item"
    );
    assert!(submitted < 1000, "cancel stops pulling input");
    assert!(
        outcomes
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_cancelled()))
    );
    pool.close();
    pool.join();
    assert_eq!(recorded(&file).len(), 2, "nothing else ran");
}

#[test]
fn cancelling_one_job_spares_another_jobs_items_on_the_killed_worker() {
    let _w = watchdog("cancelling_one_job_spares_another", LIMIT);
    let file = temp_path("cancel-spares");
    let pool = recording_pool(1, &file);
    let running = running_task(&pool);
    // Sent behind the running task on the only worker (or queued).
    let mut other = pool.apply_async(record, 7).unwrap();
    running.cancel();
    assert!(running.get().unwrap_err().is_cancelled());
    // The other job's item never started: it runs on the replacement, once.
    assert_eq!(other.get_timeout(LIMIT).unwrap(), 7);
    pool.close();
    pool.join();
    assert_eq!(recorded(&file).get(&7), Some(&1));
}

#[test]
fn a_cancelled_task_behind_another_jobs_running_task_never_runs_and_kills_nothing() {
    let _w = watchdog("a_cancelled_task_behind_another_jobs", LIMIT);
    let file = temp_path("cancel-behind");
    let pool = recording_pool(1, &file);
    let before = pool.worker_pids();
    let marker = temp_path("cancel-behind-marker");
    let first = pool
        .apply_async(
            procpool_tests::announce_and_sleep,
            (marker.display().to_string(), 500),
        )
        .unwrap();
    assert!(
        wait_until(LIMIT, || marker.exists()),
        "the first task starts"
    );
    let behind = pool.apply_async(record, 3).unwrap();
    behind.cancel();
    assert!(behind.get().unwrap_err().is_cancelled());
    assert_eq!(
        first.get().unwrap(),
        500,
        "the running task of another job finishes"
    );
    assert_eq!(pool.worker_pids(), before, "no worker was killed");
    pool.close();
    pool.join();
    assert_eq!(
        recorded(&file).get(&3),
        None,
        "the cancelled task never ran"
    );
}

#[test]
fn cancel_after_the_result_changes_nothing_and_a_cancel_handle_works_from_another_thread() {
    let _w = watchdog("cancel_after_the_result_changes_nothing", LIMIT);
    let pool = pool(1);
    let mut done = pool.apply_async(square, 6).unwrap();
    assert!(wait_until(LIMIT, || done.ready()));
    done.cancel();
    assert_eq!(done.get().unwrap(), 36);
    let running = running_task(&pool);
    let handle = running.cancel_handle();
    let canceller = std::thread::spawn(move || handle.cancel());
    // This thread waits in get() while another cancels.
    let err = running.get().unwrap_err();
    canceller.join().unwrap();
    assert!(err.is_cancelled(), "{err}");
}

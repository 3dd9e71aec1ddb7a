//! Second review of the deep pipelines (7f2ad21, dddf88e): a worker's
//! pace belongs to the job that set it. After a job of fast items the
//! pool sits idle; the next job, whatever its speed, starts at two
//! batches a worker and sizes its window by the pool's idle workers, not
//! by the old job's pace (before the fix: fed 16 deep at its first
//! dispatch, its window 66 chunks).

use procpool_tests::{init_store, record_then_sleep, recorded, sleep_ms, temp_path, watchdog};

use crate::{LIMIT, builder, pool};

/// Both workers of `pool` learn a fast pace, then the pool is idle.
fn warm(pool: &procpool::Pool) {
    let n = pool
        .with_chunksize(1)
        .imap_unordered(sleep_ms, (0..2_000).map(|_| 0))
        .unwrap()
        .count();
    assert_eq!(n, 2_000);
}

/// The first review's `a_slow_job_of_chunk_size_one_pulls_no_more_input_
/// than_two_deep_pipes_hold`, on a pool that ran a fast job before: the
/// depth the pool published while the fast job ran (or while its workers
/// sat idle, judged by their old pace) sizes the slow job's window.
#[test]
fn after_a_fast_job_a_slow_job_of_chunk_size_one_pulls_no_more_input_than_two_pipes_hold() {
    let _w = watchdog("after_a_fast_job_a_slow_job_pulls_no_more_input", LIMIT);
    let pool = pool(2);
    warm(&pool);
    let n = crate::pipeline::pulled_before_first_result(&pool);
    assert!(
        n <= 2 * 2 * 2 + 2 + 1,
        "{n} items of a slow job of chunk size 1 were pulled from the input ahead of the \
         first result, after a fast job had run"
    );
}

/// A job that starts on an idle pool is fed at the pace of the job before:
/// its first item is long, and the quick ones dispatched with it go deep
/// into that worker's pipe, where they wait the whole long item while the
/// other worker is idle. The pool had no sign that these items are fast.
#[test]
fn after_a_fast_job_quick_items_do_not_wait_in_the_pipe_of_a_long_one() {
    let _w = watchdog("after_a_fast_job_quick_items_do_not_wait", LIMIT);
    let pool = pool(2);
    warm(&pool);
    const LONG: u64 = 3_000;
    let items = std::iter::once(LONG).chain((0..40).map(|_| 0));
    let behind = crate::pipeline::came_back_after(&pool, items, LONG);
    assert!(
        behind <= 1,
        "{behind} quick items waited {LONG} ms in the pipe of a long item while the other \
         worker was idle (the new job was fed at the old job's pace)"
    );
}

/// What a dropped `Imap` still runs: "two batches, or up to 16 of a worker
/// whose items take microseconds" (`Imap`'s docs). After a fast job, a job
/// of 100 ms items gets 16 in each pipe at its first dispatch: all of them
/// run after the drop.
#[test]
fn after_a_fast_job_a_dropped_imap_of_slow_items_runs_no_more_than_two_pipes() {
    let _w = watchdog("after_a_fast_job_a_dropped_imap_of_slow_items", LIMIT);
    let file = temp_path("deep2-dropped");
    let pool = builder(2)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    warm(&pool);
    let mut it = pool
        .with_chunksize(1)
        .imap(record_then_sleep, (0..1_000u64).map(|i| (i, 100)))
        .unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
    pool.close();
    pool.join();
    let ran = recorded(&file).len();
    let _ = std::fs::remove_file(&file);
    // The one yielded, what was running and in the two pipes then.
    assert!(
        ran <= 1 + 2 * 2 + 1,
        "{ran} items of 100 ms ran after the first result of a dropped Imap"
    );
}

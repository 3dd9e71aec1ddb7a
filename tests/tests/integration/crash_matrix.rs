//! Every failure mode at every phase of a worker's life: the task it was
//! running fails naming task, pid and exit; tasks queued behind it run
//! once elsewhere (a record file proves it); a result already sent is
//! delivered; the dead worker is reaped and replaced; the pool goes on.

use std::time::Duration;

use procpool::AsyncResult;
use procpool_tests::{
    Chaos, Death, DecodeBomb, chaos, crash_after_result, crash_decoding, crash_encoding,
    crash_running, kill, process_exists, record, recorded, square, temp_path, wait_until, watchdog,
};

use crate::{LIMIT, recording_pool};

#[derive(Debug, Clone, Copy)]
enum Phase {
    DecodingArgument,
    Running,
    EncodingResult,
    AfterSendingResult,
}

fn expect_all_ok(handles: Vec<AsyncResult<u64>>, ids: std::ops::Range<u64>) {
    for (h, id) in handles.into_iter().zip(ids) {
        assert_eq!(h.get().unwrap(), id);
    }
}

#[test]
fn every_death_at_every_task_phase() {
    let _w = watchdog("every_death_at_every_task_phase", LIMIT * 3);
    for phase in [
        Phase::DecodingArgument,
        Phase::Running,
        Phase::EncodingResult,
        Phase::AfterSendingResult,
    ] {
        for death in Death::ALL {
            let case = format!("{phase:?} x {death:?}");
            let file = temp_path("matrix");
            let pool = recording_pool(1, &file);
            let victim = pool.worker_pids()[0];

            let before: Vec<_> = (0..3)
                .map(|i| pool.apply_async(record, i).unwrap())
                .collect();
            let outcome = match phase {
                Phase::DecodingArgument => pool.apply(crash_decoding, DecodeBomb(death)).map(|_| 0),
                Phase::Running => pool.apply(crash_running, death),
                Phase::EncodingResult => pool.apply(crash_encoding, death).map(|_| 0),
                Phase::AfterSendingResult => pool.apply(crash_after_result, death),
            };
            expect_all_ok(before, 0..3);
            match phase {
                Phase::AfterSendingResult => {
                    // The result was sent before the death: it is delivered.
                    assert_eq!(outcome.unwrap(), 1, "{case}");
                    assert!(
                        wait_until(LIMIT, || pool.stats().worker_deaths == 1),
                        "{case}: the worker did not die"
                    );
                }
                _ => {
                    let err = outcome.unwrap_err();
                    assert!(err.is_worker_died(), "{case}: {err}");
                    assert_eq!(err.exit(), Some(death.exit()), "{case}: {err}");
                    assert_eq!(err.worker_pid(), Some(victim), "{case}");
                    assert!(
                        err.task_name()
                            .unwrap()
                            .starts_with("procpool_tests::crash_"),
                        "{case}"
                    );
                }
            }
            // Queued behind the crash (in the dead worker's pipe, or in
            // the queue): they run once, on the replacement.
            let after: Vec<_> = (3..8)
                .map(|i| pool.apply_async(record, i).unwrap())
                .collect();
            expect_all_ok(after, 3..8);
            assert!(
                !process_exists(victim),
                "{case}: worker {victim} not reaped"
            );
            let counts = recorded(&file);
            assert_eq!(counts.len(), 8, "{case}: {counts:?}");
            assert!(
                counts.values().all(|&c| c == 1),
                "{case}: ran twice: {counts:?}"
            );
            let stats = pool.stats();
            assert_eq!(
                (stats.workers_started, stats.worker_deaths),
                (2, 1),
                "{case}"
            );
            assert_eq!(pool.apply(square, 6).unwrap(), 36, "{case}");
            let _ = std::fs::remove_file(&file);
        }
    }
}

#[test]
fn tasks_behind_a_crash_in_the_same_pipeline_run_once() {
    let _w = watchdog("tasks_behind_a_crash_in_the_same_pipeline_run_once", LIMIT);
    let file = temp_path("behind");
    let pool = recording_pool(1, &file);
    // One fresh worker, two batches in flight (no pace measured yet to
    // feed it deeper): the crash and, behind it in the pipe, the next
    // task; the rest wait in the queue.
    let crash = pool.apply_async(crash_running, Death::Segv).unwrap();
    let behind: Vec<_> = (0..20)
        .map(|i| pool.apply_async(record, i).unwrap())
        .collect();
    assert_eq!(crash.get().unwrap_err().exit(), Some(Death::Segv.exit()));
    expect_all_ok(behind, 0..20);
    assert!(recorded(&file).values().all(|&c| c == 1));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_crash_inside_an_exact_chunk_re_dispatches_the_items_not_started() {
    let _w = watchdog(
        "a_crash_inside_an_exact_chunk_re_dispatches_the_items_not_started",
        LIMIT,
    );
    let file = temp_path("eager");
    let pool = recording_pool(1, &file);
    let items: Vec<(Chaos, u64)> = (0..10)
        .map(|i| (if i == 4 { Chaos::Crash } else { Chaos::Work }, i))
        .collect();
    // A deadline makes the job exact: outcomes are reported one by one.
    let results: Vec<_> = pool
        .with_chunksize(10)
        .with_timeout(Duration::from_secs(60))
        .imap(chaos, items)
        .unwrap()
        .collect();
    for (i, r) in results.iter().enumerate() {
        if i == 4 {
            let err = r.as_ref().unwrap_err();
            assert_eq!(err.exit(), Some(procpool::Exit::Code(3)), "{err}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
    let counts = recorded(&file);
    assert_eq!(counts.len(), 9, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_crash_inside_a_batched_chunk_ends_every_item_once() {
    let _w = watchdog("a_crash_inside_a_batched_chunk_ends_every_item_once", LIMIT);
    let file = temp_path("batched");
    let pool = recording_pool(1, &file);
    let items: Vec<(Chaos, u64)> = (0..10)
        .map(|i| (if i == 4 { Chaos::Crash } else { Chaos::Work }, i))
        .collect();
    let results: Vec<_> = pool
        .with_chunksize(10)
        .imap(chaos, items)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 10);
    let err = results[4].as_ref().unwrap_err();
    assert_eq!(err.exit(), Some(procpool::Exit::Code(3)), "{err}");
    let counts = recorded(&file);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(*v, i as u64);
                assert_eq!(counts.get(&(i as u64)), Some(&1));
            }
            // Items before the crash ran; their results may have been
            // still buffered in the worker. Never twice.
            Err(e) => {
                assert!(i <= 4, "item {i} never started, yet failed: {e}");
                assert!(e.is_worker_died(), "{e}");
                if i < 4 {
                    assert_eq!(counts.get(&(i as u64)), Some(&1));
                }
            }
        }
    }
    // Exact attribution: the items after the crash never started on the
    // dead worker, so they ran elsewhere, once each.
    for i in 5..10u64 {
        assert_eq!(counts.get(&i), Some(&1), "{counts:?}");
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn an_idle_worker_killed_from_outside_is_replaced_silently() {
    let _w = watchdog(
        "an_idle_worker_killed_from_outside_is_replaced_silently",
        LIMIT,
    );
    let pool = crate::pool(2);
    let victim = pool.worker_pids()[0];
    kill(victim, libc::SIGKILL);
    assert!(wait_until(LIMIT, || pool.stats().workers_started == 3));
    assert!(!process_exists(victim));
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    let stats = pool.stats();
    assert_eq!((stats.worker_deaths, stats.tasks_failed), (1, 0));
    assert!(!pool.worker_pids().contains(&victim));
}

#[test]
fn the_host_programs_own_children_are_untouched() {
    let _w = watchdog("the_host_programs_own_children_are_untouched", LIMIT);
    let sigchld_before = sigchld_handler();
    let mut own = std::process::Command::new("sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    let pool = crate::pool(2);
    // Crashes and replacements: the pool reaps its own workers only.
    for _ in 0..3 {
        assert!(
            pool.apply(crash_running, Death::Exit(1))
                .unwrap_err()
                .is_worker_died()
        );
    }
    drop(pool);
    assert_eq!(
        own.wait().unwrap().code(),
        Some(7),
        "the host's child status was stolen"
    );
    assert_eq!(
        sigchld_handler(),
        sigchld_before,
        "SIGCHLD disposition changed"
    );
}

fn sigchld_handler() -> usize {
    // SAFETY: sigaction with a null new action only reads the current one
    // into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old),
            0
        );
        old.sa_sigaction
    }
}

use procpool::Exit;
use procpool_tests::{abort_now, exit_with, process_exists, segfault, square, watchdog};

use crate::{LIMIT, pool};

/// Runs `crash` on a one-worker pool and checks the error, the reaping of
/// the dead worker, its replacement, and that the pool goes on.
fn crash_then_recover(
    name: &str,
    expected: Exit,
    crash: impl FnOnce(&procpool::Pool) -> procpool::Error,
) {
    let _w = watchdog(name, LIMIT);
    let pool = pool(1);
    let victim = pool.worker_pids()[0];
    let err = crash(&pool);
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(expected), "{err}");
    assert_eq!(err.worker_pid(), Some(victim), "{err}");
    assert!(err.task_name().is_some());
    assert!(err.to_string().contains(&victim.to_string()), "{err}");
    // Reaped: no zombie left behind.
    assert!(!process_exists(victim), "worker {victim} still exists");
    // Replaced, and the pool answers.
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 1);
    assert_ne!(pids[0], victim);
    let stats = pool.stats();
    assert_eq!((stats.workers_started, stats.worker_deaths), (2, 1));
}

#[test]
fn a_worker_that_exits_costs_one_task() {
    crash_then_recover("exit", Exit::Code(3), |pool| {
        pool.apply(exit_with, 3).unwrap_err()
    });
}

#[test]
fn a_worker_that_aborts_costs_one_task() {
    crash_then_recover("abort", Exit::Signal(libc::SIGABRT), |pool| {
        pool.apply(abort_now, ()).unwrap_err()
    });
}

#[test]
fn a_worker_that_segfaults_costs_one_task() {
    crash_then_recover("segfault", Exit::Signal(libc::SIGSEGV), |pool| {
        pool.apply(segfault, ()).unwrap_err()
    });
}

#[test]
fn a_worker_killed_from_outside_costs_one_task() {
    crash_then_recover("sigkill", Exit::Signal(libc::SIGKILL), |pool| {
        let pid = pool.worker_pids()[0];
        let running = procpool_tests::running_task(pool);
        procpool_tests::kill(pid, libc::SIGKILL);
        running.get().unwrap_err()
    });
}

#[test]
fn tasks_queued_behind_a_crash_run_elsewhere_exactly_once() {
    let _w = watchdog(
        "tasks_queued_behind_a_crash_run_elsewhere_exactly_once",
        LIMIT,
    );
    let pool = pool(1);
    // With one fresh worker (two batches in flight: no pace measured
    // yet to feed it deeper), the squares behind the crash sit in the
    // dead worker's pipe or the queue.
    let crash = pool.apply_async(exit_with, 9).unwrap();
    let behind: Vec<_> = (0..10u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    assert_eq!(crash.get().unwrap_err().exit(), Some(Exit::Code(9)));
    for (i, h) in behind.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }
    let stats = pool.stats();
    assert_eq!(stats.tasks_succeeded, 10);
    assert_eq!(stats.tasks_failed, 1);
}

#[test]
fn a_crash_inside_imap_fails_only_its_item() {
    let _w = watchdog("a_crash_inside_imap_fails_only_its_item", LIMIT);
    let pool = pool(2);
    let codes: Vec<i32> = (0..40)
        .map(|i| if i % 10 == 5 { 100 + i } else { -1 })
        .collect();
    // exit_with(-1) would exit too; use a task per kind instead: crash items
    // go through exit_with, the rest through square, in one ordered stream.
    let results: Vec<_> = pool
        .with_chunksize(1)
        .imap(
            procpool_tests::exit_with,
            codes.iter().copied().filter(|c| *c > 0),
        )
        .unwrap()
        .collect();
    assert_eq!(results.len(), 4);
    for (r, code) in results.iter().zip([105, 115, 125, 135]) {
        assert_eq!(r.as_ref().unwrap_err().exit(), Some(Exit::Code(code)));
    }
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    assert_eq!(pool.worker_pids().len(), 2);
}

#[test]
fn a_task_the_dead_worker_never_read_runs_elsewhere() {
    let _w = watchdog("a_task_the_dead_worker_never_read_runs_elsewhere", LIMIT);
    let pool = pool(1);
    let victim = pool.worker_pids()[0];
    // A stopped worker cannot read: the task's frame stays in its pipe.
    procpool_tests::kill(victim, libc::SIGSTOP);
    assert!(procpool_tests::wait_until(LIMIT, || {
        procpool_tests::process_state(victim) == Some('T')
    }));
    let handle = pool.apply_async(square, 5).unwrap();
    // Watch the worker's end of the protocol pipe (its fd 3) fill up.
    let pipe = std::fs::File::open(format!("/proc/{victim}/fd/3")).unwrap();
    assert!(procpool_tests::wait_until(LIMIT, || unread(&pipe) > 0));
    procpool_tests::kill(victim, libc::SIGKILL);
    // It never read the task, so the task did not fail with it.
    assert_eq!(handle.get().unwrap(), 25);
    assert_eq!(pool.stats().worker_deaths, 1);
    assert_eq!(pool.stats().tasks_failed, 0);
}

fn unread(pipe: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `n`.
    let rc = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n
}

#[test]
fn an_apply_on_the_direct_lane_that_the_dead_worker_never_read_runs_elsewhere() {
    let _w = watchdog(
        "an_apply_on_the_direct_lane_that_the_dead_worker_never_read_runs_elsewhere",
        LIMIT,
    );
    let pool = pool(1);
    let victim = pool.worker_pids()[0];
    procpool_tests::kill(victim, libc::SIGSTOP);
    assert!(procpool_tests::wait_until(LIMIT, || {
        procpool_tests::process_state(victim) == Some('T')
    }));
    let pipe = std::fs::File::open(format!("/proc/{victim}/fd/3")).unwrap();
    std::thread::scope(|s| {
        // A blocking apply takes the idle worker on the direct lane.
        let caller = s.spawn(|| pool.apply(square, 6));
        assert!(procpool_tests::wait_until(LIMIT, || unread(&pipe) > 0));
        procpool_tests::kill(victim, libc::SIGKILL);
        assert_eq!(caller.join().unwrap().unwrap(), 36);
    });
    assert_eq!(pool.stats().tasks_failed, 0);
}

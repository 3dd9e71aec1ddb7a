//! Restart intensity: replacements that keep failing are retried with
//! backoff up to a limit; just under it the pool recovers, just over it
//! the pool is broken with a reason, and `terminate` still works.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{Death, kill, not_running, square, temp_path, wait_until, watchdog};

use crate::{FAULT_WORKER, LIMIT};

fn pool_whose_replacements_die(counter: &std::path::Path, times: u32) -> Pool {
    Pool::builder()
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
            "--times",
            &times.to_string(),
        ])
        .restart_limit(3, Duration::from_secs(60))
        .build()
        .unwrap()
}

#[test]
fn just_under_the_restart_limit_the_pool_recovers() {
    let _w = watchdog("just_under_the_restart_limit_the_pool_recovers", LIMIT);
    let counter = temp_path("under");
    let pool = pool_whose_replacements_die(&counter, 3);
    kill(pool.worker_pids()[0], libc::SIGKILL);
    // A task handed to the worker in the instant it was dying would fail
    // with it (it might have started); wait until the pool saw the death.
    assert!(wait_until(LIMIT, || pool.stats().worker_deaths >= 1));
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    assert_eq!(pool.stats().start_failures, 3);
    let _ = std::fs::remove_file(&counter);
}

#[test]
fn just_over_the_restart_limit_the_pool_is_broken() {
    let _w = watchdog("just_over_the_restart_limit_the_pool_is_broken", LIMIT);
    let counter = temp_path("over");
    let pool = pool_whose_replacements_die(&counter, 4);
    let first = pool.worker_pids()[0];
    let running = procpool_tests::running_task(&pool);
    let queued = pool.apply_async(square, 2).unwrap();
    kill(first, libc::SIGKILL);
    assert!(running.get().unwrap_err().is_worker_died());
    let err = queued.get().unwrap_err();
    assert!(err.is_broken(), "{err}");
    assert!(err.to_string().contains("failed to start 4 times"), "{err}");
    assert!(err.to_string().contains("exit code 7"), "{err}");
    // Later work is refused with the same reason; no fork bomb went on.
    let later = pool.apply(square, 3).unwrap_err();
    assert!(later.is_broken(), "{later}");
    assert_eq!(pool.stats().start_failures, 4);
    assert_eq!(
        std::fs::read(&counter).unwrap().len(),
        5,
        "starts: 1 good + 4 failed"
    );
    assert!(pool.worker_pids().is_empty());
    pool.terminate();
    let _ = std::fs::remove_file(&counter);
}

#[test]
fn a_worker_program_that_disappears_breaks_the_pool_cleanly() {
    let _w = watchdog(
        "a_worker_program_that_disappears_breaks_the_pool_cleanly",
        LIMIT,
    );
    let copy = temp_path("vanishing-worker");
    std::fs::copy(FAULT_WORKER, &copy).unwrap();
    let pool = Pool::builder()
        .workers(1)
        .worker_program(&copy)
        .restart_limit(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let victim = pool.worker_pids()[0];
    std::fs::remove_file(&copy).unwrap();
    kill(victim, libc::SIGKILL);
    assert!(wait_until(LIMIT, || not_running(victim)));
    let err = pool.apply(square, 2).unwrap_err();
    assert!(err.is_broken(), "{err}");
    assert!(err.to_string().contains("vanishing-worker"), "{err}");
    assert_eq!(pool.stats().start_failures, 3);
}

/// Fault-worker arguments that make starts `skip+1 ..= skip+times` die.
fn dying_starts(
    phase: &str,
    death: Death,
    counter: &std::path::Path,
    skip: u32,
    times: u32,
) -> Vec<String> {
    let death = match death {
        Death::Exit(c) => format!("exit:{c}"),
        Death::Abort => "abort".into(),
        Death::Segv => "segv".into(),
        Death::Kill => "kill".into(),
    };
    vec![
        "--crash-at".into(),
        phase.into(),
        "--death".into(),
        death,
        "--counter".into(),
        counter.display().to_string(),
        "--skip".into(),
        skip.to_string(),
        "--times".into(),
        times.to_string(),
    ]
}

#[test]
fn replacements_that_die_at_start_up_or_in_the_handshake_are_retried() {
    let _w = watchdog(
        "replacements_that_die_at_start_up_or_in_the_handshake_are_retried",
        LIMIT * 2,
    );
    for phase in ["start", "handshake"] {
        for death in Death::ALL {
            let case = format!("{phase} x {death:?}");
            let counter = temp_path("starts");
            let pool = Pool::builder()
                .workers(1)
                .worker_program(FAULT_WORKER)
                .worker_args(dying_starts(phase, death, &counter, 1, 2))
                .build()
                .unwrap();
            let victim = pool.worker_pids()[0];
            let pending = procpool_tests::running_task(&pool);
            kill(victim, libc::SIGKILL);
            assert_eq!(
                pending.get().unwrap_err().exit(),
                Some(Death::Kill.exit()),
                "{case}"
            );
            // Two replacements die; the third serves.
            assert_eq!(pool.apply(square, 9).unwrap(), 81, "{case}");
            let stats = pool.stats();
            assert_eq!(stats.start_failures, 2, "{case}: {stats:?}");
            assert_eq!(stats.workers_started, 4, "{case}: {stats:?}");
            let _ = std::fs::remove_file(&counter);
        }
    }
}

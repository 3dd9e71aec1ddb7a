//! Fault 11: a host program that set SIGCHLD to `SIG_IGN`.
//!
//! The kernel then reaps children by itself, so the pool's `waitpid` finds
//! nothing (ECHILD) and cannot learn how a worker ended. A worker death
//! must still be reported as one, saying its status is unknown rather than
//! inventing one ("exit code -1"), and the pool must go on.
//!
//! `signal(SIGCHLD, SIG_IGN)` is process-wide: this is a test binary of
//! its own, so no other test runs under it.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{kill, running_task, square, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

fn ignore_sigchld() {
    // SAFETY: signal only changes this process's disposition of SIGCHLD;
    // every test of this binary wants it ignored.
    let previous = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGCHLD, SIG_IGN) failed");
}

/// Fault 11: with SIGCHLD ignored, a SIGKILLed worker was reported as
/// "died (exit code -1)". The error must be a worker death whose message
/// says the status is unknown, and a replacement must serve the next task.
#[test]
fn fault11_a_worker_death_with_sigchld_ignored_has_an_unknown_status() {
    let _w = watchdog(
        "fault11_a_worker_death_with_sigchld_ignored_has_an_unknown_status",
        Duration::from_secs(60),
    );
    ignore_sigchld();
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    let victim = pool.worker_pids()[0];
    let handle = running_task(&pool);
    kill(victim, libc::SIGKILL);
    let err = handle.get().unwrap_err();
    let text = err.to_string();
    assert!(err.is_worker_died(), "not a worker death: {text}");
    assert_eq!(err.worker_pid(), Some(victim), "{text}");
    assert!(
        !text.contains("exit code -1"),
        "the error claims an exit code nobody saw: {text}"
    );
    assert_ne!(
        err.exit(),
        Some(procpool::Exit::Code(-1)),
        "made-up exit status: {text}"
    );
    assert!(
        text.to_lowercase().contains("unknown"),
        "the error should say the worker's status is unknown: {text}"
    );
    // The replacement serves the next task.
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    assert!(!pool.worker_pids().contains(&victim));
}

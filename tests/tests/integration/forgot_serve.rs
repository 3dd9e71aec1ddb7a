//! A re-exec program that forgot `procpool::serve_if_worker` (the
//! `forgot-serve-if-worker` helper, whose `main` returns the error): one
//! message, on one line, once, whatever the number of workers; and a copy
//! started as a worker that reaches `build()` exits silently with its own
//! code.

use std::process::{Command, Output};

use procpool_protocol::exit_code;
use procpool_tests::watchdog;

use crate::LIMIT;

const PROGRAM: &str = env!("CARGO_BIN_EXE_forgot-serve-if-worker");

fn run(env: &[(&str, String)]) -> (Output, String) {
    let mut cmd = Command::new(PROGRAM);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the helper runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn a_program_that_never_calls_serve_if_worker_is_told_once() {
    let _w = watchdog(
        "a_program_that_never_calls_serve_if_worker_is_told_once",
        LIMIT,
    );
    let (out, stderr) = run(&[]);
    // `main` returned the error: Rust printed "Error: " and its `Debug`,
    // which is the message itself, on one line; no worker printed anything.
    assert_eq!(
        stderr,
        "Error: cannot start workers: in re-exec mode this program is its own worker, but `main` \
         did not call `procpool::serve_if_worker(&tasks)`: make that the first statement of \
         `main`\n"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn copies_that_build_a_pool_exit_quietly_and_the_pool_says_why_once() {
    let _w = watchdog(
        "copies_that_build_a_pool_exit_quietly_and_the_pool_says_why_once",
        LIMIT,
    );
    // The parent calls serve_if_worker, its four copies do not: each
    // reaches build() as a worker.
    let (out, stderr) = run(&[("FORGOT_IN_WORKERS_ONLY", "1".into())]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(line.starts_with("Error: cannot start workers: `"), "{line}");
    // Only a worker that exited with DID_NOT_SERVE leads to this text.
    assert!(
        line.ends_with(
            " (re-exec)`, started as a worker, built a pool instead of serving: make \
             `procpool::serve_if_worker(&tasks)` the first statement of its `main`, on every path"
        ),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn a_copy_started_by_a_pool_that_builds_a_pool_exits_silently_with_its_code() {
    let _w = watchdog(
        "a_copy_started_by_a_pool_that_builds_a_pool_exits_silently_with_its_code",
        LIMIT,
    );
    // As a pool would start it: the worker variable, and this process's pid
    // as its parent's.
    let (out, stderr) = run(&[
        ("PROCPOOL_WORKER", "1".into()),
        ("PROCPOOL_PARENT_PID", std::process::id().to_string()),
    ]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::DID_NOT_SERVE),
        "{stderr}"
    );
    assert_eq!(stderr, "");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn a_worker_variable_set_by_hand_gets_the_error_not_silence() {
    let _w = watchdog(
        "a_worker_variable_set_by_hand_gets_the_error_not_silence",
        LIMIT,
    );
    for env in [
        vec![("PROCPOOL_WORKER", "1".to_owned())],
        // A parent pid that is not ours: a stale variable, not a pool.
        vec![
            ("PROCPOOL_WORKER", "1".to_owned()),
            ("PROCPOOL_PARENT_PID", "1".to_owned()),
        ],
    ] {
        let (out, stderr) = run(&env);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
        assert!(
            stderr.starts_with(
                "Error: cannot start workers: this process has PROCPOOL_WORKER set, as a pool's \
                 worker would, but builds a pool: make `procpool::serve_if_worker(&tasks)` the \
                 first statement of `main`"
            ),
            "{env:?}: {stderr}"
        );
    }
}

#[test]
fn a_program_that_asks_is_worker_and_runs_the_worker_is_served() {
    let _w = watchdog("a_program_that_asks_is_worker_and_runs_the_worker", LIMIT);
    let (out, stderr) = run(&[("ASKS_IS_WORKER", "1".into())]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[0, 1, 4, 9]\n");
}

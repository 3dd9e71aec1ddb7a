use std::time::Duration;

use procpool::Pool;
use procpool_tests::{init_fail, init_panic, init_store, init_value, watchdog};

use crate::{FAULT_WORKER, LIMIT};

fn start(program: &str, args: &[&str]) -> procpool::Error {
    Pool::builder()
        .workers(2)
        .worker_program(program)
        .worker_args(args.iter().copied())
        .startup_timeout(Duration::from_secs(2))
        .build()
        .unwrap_err()
}

#[test]
fn a_missing_program_is_a_startup_error() {
    let _w = watchdog("a_missing_program_is_a_startup_error", LIMIT);
    let err = start("/no/such/worker", &[]);
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("/no/such/worker"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_program_that_prints_text_is_not_a_worker() {
    let _w = watchdog("a_program_that_prints_text_is_not_a_worker", LIMIT);
    let err = start("/bin/echo", &["hello from a program that is not a worker"]);
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("not a procpool"), "{err}");
    assert!(err.to_string().contains("hello from a"), "{err}");
}

#[test]
fn a_program_that_exits_at_once_is_a_startup_error() {
    let _w = watchdog("a_program_that_exits_at_once_is_a_startup_error", LIMIT);
    let err = start("/bin/false", &[]);
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("before its handshake"), "{err}");
    assert!(err.to_string().contains("exit code 1"), "{err}");
}

#[test]
fn a_program_that_never_answers_times_out() {
    let _w = watchdog("a_program_that_never_answers_times_out", LIMIT);
    let err = start("/bin/sleep", &["1000"]);
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("handshake in time"), "{err}");
}

#[test]
fn a_worker_of_another_protocol_version_is_refused() {
    let _w = watchdog("a_worker_of_another_protocol_version_is_refused", LIMIT);
    let err = start(
        "/bin/sh",
        &["-c", "printf 'PROCPOOL\\143\\000\\000\\000'; sleep 5"],
    );
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn the_initializer_runs_once_in_every_worker() {
    let _w = watchdog("the_initializer_runs_once_in_every_worker", LIMIT);
    let pool = Pool::builder()
        .workers(3)
        .worker_program(FAULT_WORKER)
        .initializer(init_store, "configured".to_owned())
        .build()
        .unwrap();
    let values = pool
        .with_chunksize(1)
        .map(init_value, vec![(); 30])
        .unwrap();
    assert!(
        values.iter().all(|v| v.as_deref() == Some("configured")),
        "{values:?}"
    );
    // Replacements run it too.
    let _ = pool.apply(procpool_tests::exit_with, 1).unwrap_err();
    let values = pool
        .with_chunksize(1)
        .map(init_value, vec![(); 30])
        .unwrap();
    assert!(
        values.iter().all(|v| v.as_deref() == Some("configured")),
        "{values:?}"
    );
}

#[test]
fn a_failing_initializer_is_a_startup_error() {
    let _w = watchdog("a_failing_initializer_is_a_startup_error", LIMIT);
    let err = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .initializer(init_fail, "no database".to_owned())
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("no database"), "{err}");

    let err = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .initializer(init_panic, "init exploded".to_owned())
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("init exploded"), "{err}");
}

#[test]
fn zero_workers_is_refused() {
    let err = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
}

#[test]
fn a_program_that_is_not_executable_is_a_startup_error() {
    use std::os::unix::fs::PermissionsExt;
    let _w = watchdog("a_program_that_is_not_executable_is_a_startup_error", LIMIT);
    let copy = procpool_tests::temp_path("not-executable");
    std::fs::copy(FAULT_WORKER, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start(copy.to_str().unwrap(), &[]);
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("ermission denied"), "{err}");
    let _ = std::fs::remove_file(&copy);
}

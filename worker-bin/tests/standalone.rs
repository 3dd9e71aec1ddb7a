//! The real `procpool-worker` binary: as a pool's worker program, and
//! started by hand.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use procpool::Pool;

const WORKER: &str = env!("CARGO_BIN_EXE_procpool-worker");

/// Runs `f` on a thread; a hang past `limit` fails the test.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}: hung"))
}

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn serves_the_built_in_tasks_to_a_pool() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .workers(2)
            .worker_program(WORKER)
            .build()
            .unwrap();
        assert_eq!(
            pool.map(procpool_worker::square, 0..100u64).unwrap(),
            (0..100u64).map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(
            pool.starmap(procpool_worker::add, vec![(1, 2), (3, 4)])
                .unwrap(),
            vec![3, 7]
        );
        assert_eq!(
            pool.apply(procpool_worker::echo, "hi".to_owned()).unwrap(),
            "hi"
        );
        assert_eq!(
            pool.apply(procpool_worker::fnv1a, b"a".to_vec()).unwrap(),
            0xaf63dc4c8601ec8c
        );
        assert!(
            pool.apply(procpool_worker::parse_int, "x".to_owned())
                .unwrap()
                .is_err()
        );
        let pid = pool.apply(procpool_worker::worker_pid, ()).unwrap();
        assert!(pool.worker_pids().contains(&pid));
    });
}

#[test]
fn help_and_version() {
    let help = Command::new(WORKER).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: procpool-worker"));
    let version = Command::new(WORKER).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("procpool-worker {}", env!("CARGO_PKG_VERSION"))
    );
    let list = Command::new(WORKER).arg("--list").output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("procpool_worker::square"));
}

#[test]
fn started_by_hand_it_explains_and_exits() {
    for stdin in [Stdio::null(), Stdio::piped()] {
        let out = bounded(LIMIT, move || {
            // A piped stdin that stays open: a worker waiting for a parent
            // would hang here forever.
            let child = Command::new(WORKER)
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.wait_with_output().unwrap()
        });
        assert_eq!(out.status.code(), Some(64));
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("started by a procpool Pool"), "{stderr}");
    }
}

#[test]
fn an_unknown_argument_is_refused() {
    let out = Command::new(WORKER).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

//! Workers launched by Slurm's `srun`, on the single-node cluster that
//! `scripts/slurm-single-node` brings up (CI runs it before the tests).
//! Without a working `srun` each test prints one `SKIPPED:` line and
//! returns. (The same launcher path is covered without Slurm by
//! `launcher.rs`, through a stand-in prefix.)

use std::time::Duration;

use procpool::{Launcher, Pool};
use procpool_tests::{pid, segfault, sleep_ms, square, wait_until, watchdog};

use crate::common::{FAULT_WORKER, LIMIT};

/// `srun` as a byte-stream launcher: `-u`, or slurmstepd holds the
/// worker's output until a newline.
fn srun() -> Launcher {
    Launcher::command(["srun", "-u", "--nodes=1", "--ntasks=1", "--"]).name("slurm")
}

/// Whether `srun` runs a step here; otherwise one `SKIPPED:` line.
fn slurm_or_skip() -> bool {
    let works = std::process::Command::new("srun")
        .args(["--nodes=1", "--ntasks=1", "--immediate=10", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        let thread = std::thread::current();
        procpool_tests::write_to_stderr_fd(
            format!(
                "SKIPPED: {}: needs a working srun (start a one-node cluster with \
                 scripts/slurm-single-node, as root)\n",
                thread.name().unwrap_or("a test")
            )
            .as_bytes(),
        );
    }
    works
}

#[test]
fn workers_from_srun_serve_and_report_a_segfault_exactly() {
    let _w = watchdog("workers_from_srun_serve_and_report_a_segfault", LIMIT);
    if !slurm_or_skip() {
        return;
    }
    let pool = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(srun().workers(2))
        .build()
        .unwrap();
    let v: Vec<u64> = pool.map(square, 0..5_000u64).unwrap();
    assert_eq!(v, (0..5_000u64).map(|x| x * x).collect::<Vec<_>>());
    let err = pool.apply(segfault, ()).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(procpool::Exit::Signal(11)), "{err}");
    assert_eq!(err.host(), Some("slurm"), "{err}");
    assert_eq!(pool.apply(square, 8).unwrap(), 64);
}

#[test]
fn a_deadline_kills_an_srun_worker() {
    let _w = watchdog("a_deadline_kills_an_srun_worker", LIMIT);
    if !slurm_or_skip() {
        return;
    }
    let pool = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(srun().workers(1))
        .build()
        .unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let err = pool
        .with_timeout(Duration::from_millis(300))
        .apply(sleep_ms, 60_000)
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        wait_until(LIMIT, || procpool_tests::not_running(worker)),
        "the worker outlived its deadline"
    );
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    drop(pool);
}

//! Recycling after N tasks, and the per-worker memory limit.

use std::collections::BTreeSet;

use procpool_tests::{allocate_mib, pid, square, temp_path, watchdog};

use crate::LIMIT;

#[test]
fn a_worker_is_replaced_after_max_tasks() {
    let _w = watchdog("a_worker_is_replaced_after_max_tasks", LIMIT);
    let pool = crate::builder(1).max_tasks_per_worker(5).build().unwrap();
    let pids: Vec<u32> = pool.with_chunksize(1).map(pid, vec![(); 20]).unwrap();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{pids:?}");
    for w in pids.chunks(5) {
        assert!(w.iter().all(|p| *p == w[0]), "5 tasks per worker: {pids:?}");
    }
    let stats = pool.stats();
    assert!(stats.recycles >= 3, "{stats:?}");
    assert_eq!(stats.worker_deaths, 0, "{stats:?}");
    assert_eq!(stats.tasks_failed, 0);
}

#[test]
fn a_runaway_allocation_costs_its_worker_only() {
    let _w = watchdog("a_runaway_allocation_costs_its_worker_only", LIMIT);
    // The worker's stderr (the allocation failure, and a backtrace under
    // RUST_BACKTRACE) goes to a file, checked below, not to the terminal.
    let stderr = temp_path("oom-stderr");
    let pool = crate::builder(1)
        .worker_args(["--stderr".into(), stderr.clone().into_os_string()])
        .worker_memory_limit(512 << 20)
        .build()
        .unwrap();
    assert_eq!(pool.apply(allocate_mib, 16).unwrap(), 16 * 256);
    let err = pool.apply(allocate_mib, 4096).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(
        err.exit(),
        Some(procpool::Exit::Signal(libc::SIGABRT)),
        "{err}"
    );
    let printed = std::fs::read_to_string(&stderr).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr);
    assert!(
        printed.contains("memory allocation of 4294967296 bytes failed"),
        "the worker's stderr: {printed}"
    );
    assert_eq!(pool.apply(square, 8).unwrap(), 64);
}

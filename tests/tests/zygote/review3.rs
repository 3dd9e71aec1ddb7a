//! Third review of the zygote start method: the crate docs' promises
//! ("Start methods") that no earlier scenario proved, and the settings an
//! exec pool already survives.
//!
//! - `startup_timeout(Duration::MAX)` ("no deadline") builds a zygote pool
//!   as it builds an exec one;
//! - a forked worker leads its own process group and is a child subreaper,
//!   as an exec'd one is;
//! - a file the initializer opened is one open file for every worker,
//!   offset included (the documented cost);
//! - the zygote's own copy of the state is never dropped, the workers'
//!   copies are.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use procpool_tests::{
    init_open_file, process_report, read_shared_byte, start_tally, tally, tally_marker, temp_path,
    wait_until, watchdog,
};

use crate::procs::{marked, marker, ppid_of, the_zygote};
use crate::{LIMIT, builder};

/// Exec pools build with `startup_timeout(Duration::MAX)` (seams.rs,
/// "Fault 8": a `Duration::MAX` setting is no deadline, not a panic). The
/// zygote's start adds it to `Instant::now()` unchecked.
#[test]
fn review3_a_zygote_pool_with_no_startup_deadline_builds() {
    let _w = watchdog(
        "review3_a_zygote_pool_with_no_startup_deadline_builds",
        LIMIT,
    );
    let pool = builder(2)
        .startup_timeout(Duration::MAX)
        .build()
        .unwrap_or_else(|e| panic!("startup_timeout(Duration::MAX): {e}"));
    assert_eq!(pool.apply(procpool_tests::square, 5u64).unwrap(), 25);
    assert_eq!(pool.stats().workers_forked, 2, "{:?}", pool.stats());
    pool.join();
}

/// The docs: "Each worker gets ... its own process group, and becomes a
/// child subreaper, as an exec'd worker does."
#[test]
fn review3_forked_workers_lead_their_own_group_and_are_subreapers() {
    let _w = watchdog(
        "review3_forked_workers_lead_their_own_group_and_are_subreapers",
        LIMIT,
    );
    let pool = builder(2).build().unwrap();
    let me = std::process::id();
    let mut seen = HashSet::new();
    assert!(wait_until(LIMIT, || {
        for (pid, pgid, subreaper) in pool
            .with_chunksize(1)
            .map(process_report, vec![(); 8])
            .unwrap()
        {
            assert_eq!(pgid, pid, "worker {pid} leads its own group");
            assert_eq!(subreaper, 1, "worker {pid} is a child subreaper");
            assert_ne!(ppid_of(pid), Some(me), "worker {pid} was forked");
            seen.insert(pid);
        }
        seen.len() >= 2
    }));
    assert_eq!(pool.stats().workers_forked, 2);
    pool.join();
}

/// The docs: "a file the initializer opened is one open file shared by
/// every worker, offset included". Plain reads from two workers never see
/// the same byte.
#[test]
fn review3_an_initializers_open_file_is_shared_offset_included() {
    let _w = watchdog(
        "review3_an_initializers_open_file_is_shared_offset_included",
        LIMIT,
    );
    let path = temp_path("review3-shared-file");
    std::fs::write(&path, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let pool = builder(2)
        .initializer(init_open_file, path.display().to_string())
        .build()
        .unwrap();
    let mut pids = BTreeSet::new();
    let mut bytes = Vec::new();
    assert!(wait_until(LIMIT, || {
        for (pid, b) in pool
            .with_chunksize(1)
            .map(read_shared_byte, vec![(); 8])
            .unwrap()
        {
            pids.insert(pid);
            bytes.push(b.expect("the file has 256 bytes"));
        }
        pids.len() >= 2 || bytes.len() >= 200
    }));
    assert!(pids.len() >= 2, "two workers read: {pids:?}");
    let distinct: BTreeSet<u8> = bytes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        bytes.len(),
        "one offset for every worker: {bytes:?}"
    );
    pool.join();
    let _ = std::fs::remove_file(&path);
}

/// The docs: "the zygote's own copy of the state is never dropped (its
/// `Drop` would act on what the workers share)"; each worker's copy is
/// dropped at `join`.
#[test]
fn review3_the_zygotes_copy_of_the_state_is_never_dropped() {
    let _w = watchdog(
        "review3_the_zygotes_copy_of_the_state_is_never_dropped",
        LIMIT,
    );
    let m = marker("review3-state");
    let dir = temp_path("review3-state");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = marked(2, &m)
        .worker_state(start_tally, dir.display().to_string())
        .build()
        .unwrap();
    let zygote = the_zygote(&m);
    let mut workers = BTreeSet::new();
    assert!(wait_until(LIMIT, || {
        for r in pool.with_chunksize(1).map(tally, vec![(); 8]).unwrap() {
            workers.insert(r.pid);
        }
        workers.len() >= 2
    }));
    pool.join();
    // The zygote is gone with the pool; give a Drop a moment to show.
    assert!(wait_until(LIMIT, || procpool_tests::not_running(zygote)));
    std::thread::sleep(Duration::from_millis(100));
    for &w in &workers {
        assert!(
            tally_marker(&dir, w, None).exists(),
            "worker {w} dropped its state"
        );
    }
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|e| e.contains(&format!("-{zygote}-"))),
        "the zygote {zygote} dropped its state: {entries:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Per-worker state (`Builder::worker_state`, `Registry::task_with_state`)
//! and the worker index, on real worker processes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{
    Label, TallyReport, init_store, label_with, registry, start_label, start_tally,
    start_tally_or_fail, tally, tally_marker, temp_path, wait_until, watchdog, worker_index,
};

use crate::LIMIT;

/// A fresh directory for drop markers.
fn marker_dir(name: &str) -> PathBuf {
    let dir = temp_path(name);
    std::fs::create_dir(&dir).expect("create the marker directory");
    dir
}

/// The index an initializer sees in worker `index`: its own, except in a
/// zygote, which runs the initializer once, before any worker exists.
fn index_at_init(index: usize) -> Option<usize> {
    (crate::START == procpool::StartMethod::Exec).then_some(index)
}

/// A pool of `n` fault workers whose state is a `Tally` dropping its
/// marker in `dir`.
fn tally_pool(n: usize, dir: &Path) -> procpool::Builder {
    crate::builder(n).worker_state(start_tally, dir.display().to_string())
}

/// Runs `tally` one item at a time until every one of the pool's current
/// workers has answered; returns every report.
fn tally_every_worker(pool: &Pool) -> Vec<TallyReport> {
    let mut reports = Vec::new();
    let everyone = wait_until(LIMIT, || {
        let batch = pool
            .with_chunksize(1)
            .map(tally, vec![(); 4 * pool.workers()])
            .unwrap();
        reports.extend(batch);
        // In-process workers share a pid: tell them apart by index.
        let seen: BTreeSet<(u32, Option<usize>)> =
            reports.iter().map(|r| (r.pid, r.index)).collect();
        seen.len() >= pool.workers()
            && pool
                .worker_pids()
                .iter()
                .all(|p| seen.iter().any(|s| s.0 == *p))
    });
    assert!(everyone, "some worker never ran a task: {reports:?}");
    reports
}

/// Each worker's reports, by pid and index, in the order they were made.
fn by_worker(reports: &[TallyReport]) -> BTreeMap<(u32, Option<usize>), Vec<TallyReport>> {
    let mut by = BTreeMap::<_, Vec<TallyReport>>::new();
    for r in reports {
        by.entry((r.pid, r.index)).or_default().push(*r);
    }
    for rs in by.values_mut() {
        rs.sort_by_key(|r| r.runs);
    }
    by
}

/// Every worker's state counted its own tasks, from 1, without a gap:
/// one state per worker, kept from task to task.
fn assert_counted_from_one(reports: &[TallyReport]) {
    for (worker, rs) in by_worker(reports) {
        let runs: Vec<u64> = rs.iter().map(|r| r.runs).collect();
        let want: Vec<u64> = (1..=rs.len() as u64).collect();
        assert_eq!(runs, want, "worker {worker:?}: {reports:?}");
    }
}

#[test]
fn the_state_survives_across_tasks() {
    let _w = watchdog("the_state_survives_across_tasks", LIMIT);
    let dir = marker_dir("state-survives");
    let pool = tally_pool(2, &dir).build().unwrap();
    let first = pool.with_chunksize(1).map(tally, vec![(); 30]).unwrap();
    let again = pool.apply(tally, ()).unwrap();
    let mut all = first.clone();
    all.push(again);
    assert_counted_from_one(&all);
    assert_eq!(all.len(), 31);
    // One worker in order: its counts rise one by one.
    let pool = tally_pool(1, &dir).build().unwrap();
    let runs: Vec<u64> = pool
        .map(tally, vec![(); 10])
        .unwrap()
        .iter()
        .map(|r| r.runs)
        .collect();
    assert_eq!(runs, (1..=10).collect::<Vec<u64>>());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replacement_worker_makes_its_state_afresh_under_the_same_index() {
    let _w = watchdog(
        "a_replacement_worker_makes_its_state_afresh_under_the_same_index",
        LIMIT,
    );
    let dir = marker_dir("state-replaced");
    let pool = tally_pool(3, &dir).build().unwrap();
    let before = tally_every_worker(&pool);
    let victim = *before
        .iter()
        .find(|r| r.index == Some(1))
        .expect("worker 1");
    assert!(victim.runs >= 1);

    procpool_tests::kill(victim.pid, libc::SIGKILL);
    // The pool sees the death and starts a replacement.
    assert!(
        wait_until(LIMIT, || {
            let pids = pool.worker_pids();
            pids.len() == 3 && !pids.contains(&victim.pid)
        }),
        "worker {} was never replaced",
        victim.pid
    );
    let after = tally_every_worker(&pool);
    let by = by_worker(&after);
    let old: BTreeSet<u32> = before.iter().map(|r| r.pid).collect();
    let new: Vec<_> = by.keys().copied().filter(|w| !old.contains(&w.0)).collect();
    assert_eq!(new.len(), 1, "one replacement: {after:?}");
    let replacement = &by[&new[0]];
    // Same index, seen by the initializer and the tasks; a fresh state
    // (the survivors' states go on counting).
    assert!(
        replacement
            .iter()
            .all(|r| r.index == Some(1) && r.index_at_init == index_at_init(1)),
        "{replacement:?}"
    );
    assert_eq!(replacement[0].runs, 1, "{replacement:?}");
    assert_counted_from_one(&before.iter().chain(&after).copied().collect::<Vec<_>>());
    // SIGKILL runs no destructor.
    assert!(!tally_marker(&dir, victim.pid, index_at_init(1)).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_state_is_dropped_when_its_worker_retires() {
    let _w = watchdog("the_state_is_dropped_when_its_worker_retires", LIMIT);
    let dir = marker_dir("state-dropped");
    let pool = tally_pool(1, &dir).max_tasks_per_worker(3).build().unwrap();
    let reports = pool.with_chunksize(1).map(tally, vec![(); 9]).unwrap();
    // Workers are recycled after 3 tasks: each made a state of its own.
    assert_counted_from_one(&reports);
    let by = by_worker(&reports);
    assert_eq!(by.len(), 3, "{reports:?}");
    // join ends the last one the same way: its input closes.
    pool.join();
    for ((pid, index), rs) in &by {
        assert_eq!(*index, Some(0));
        let marker = tally_marker(&dir, *pid, index_at_init(0));
        let written = std::fs::read_to_string(&marker)
            .unwrap_or_else(|e| panic!("worker {pid} did not drop its state ({e}): {rs:?}"));
        assert_eq!(written, rs.len().to_string(), "worker {pid}");
    }
    assert_eq!(pool.stats().worker_deaths, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_task_taking_state_is_refused_at_submit_by_a_pool_without_it() {
    let _w = watchdog(
        "a_task_taking_state_is_refused_at_submit_by_a_pool_without_it",
        LIMIT,
    );
    let pool = crate::pool(1);
    let err = pool.apply(tally, ()).unwrap_err();
    assert!(err.is_missing_state(), "{err}");
    assert_eq!(err.task_name(), Some(std::any::type_name_of_val(&tally)));
    let text = err.to_string();
    let takes = format!(
        "takes the worker state `{}`",
        std::any::type_name::<procpool_tests::Tally>()
    );
    for words in [
        takes.as_str(),
        "hold no state",
        "Registry::initializer",
        "Builder::worker_state",
    ] {
        assert!(text.contains(words), "{words:?} not in: {text}");
    }
    // Refused before anything was sent: the argument comes back.
    let refused = pool.apply_async(label_with, "!".to_owned()).unwrap_err();
    assert!(refused.error().is_missing_state(), "{}", refused.error());
    assert_eq!(refused.into_arg(), "!");
    // A pool whose workers hold another state says which.
    let labelled = crate::builder(1)
        .worker_state(start_label, "worker ".to_owned())
        .build()
        .unwrap();
    let err = labelled.map(tally, [(), ()]).unwrap_err();
    assert!(err.is_missing_state(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "hold `{}` (made by `{}`)",
            std::any::type_name::<Label>(),
            std::any::type_name_of_val(&start_label)
        )),
        "{text}"
    );
    assert_eq!(
        labelled.apply(label_with, "0".to_owned()).unwrap(),
        "worker 0"
    );
    // Nothing of the refused calls reached a worker.
    assert_eq!(pool.stats().tasks_failed, 0);
    assert_eq!(pool.apply(procpool_tests::square, 3).unwrap(), 9);
}

#[test]
fn a_state_initializer_may_be_named_by_a_parent_without_the_state_type() {
    let _w = watchdog(
        "a_state_initializer_may_be_named_by_a_parent_without_the_state_type",
        LIMIT,
    );
    // A parent built apart from its worker program knows the name and the
    // argument; the state's type stays the worker's business.
    let dir = marker_dir("state-named");
    let init: procpool::Task<String, ()> =
        procpool::Task::named(std::any::type_name_of_val(&start_tally));
    let pool = crate::builder(1)
        .worker_state(init, dir.display().to_string())
        .build()
        .unwrap();
    assert_eq!(pool.apply(tally, ()).unwrap().runs, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_initializer_must_be_registered_as_one_and_may_fail() {
    let _w = watchdog(
        "a_state_initializer_must_be_registered_as_one_and_may_fail",
        LIMIT,
    );
    let err = crate::builder(1)
        .worker_state(init_store, "x".to_owned())
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(
        err.to_string()
            .contains("register it with Registry::initializer"),
        "{err}"
    );
    let err = crate::builder(2)
        .worker_state(start_tally_or_fail, "no tally today".to_owned())
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("no tally today"), "{err}");
}

#[test]
fn worker_indices_are_exactly_0_to_workers() {
    let _w = watchdog("worker_indices_are_exactly_0_to_workers", LIMIT);
    assert_eq!(procpool::worker::index(), None, "the test is no worker");
    let pool = crate::pool(4);
    let mut seen = BTreeMap::new();
    let everyone = wait_until(LIMIT, || {
        for (pid, index) in pool
            .with_chunksize(1)
            .map(worker_index, vec![(); 16])
            .unwrap()
        {
            assert_eq!(
                *seen.entry(pid).or_insert(index),
                index,
                "worker {pid} changed index"
            );
        }
        seen.len() == 4
    });
    assert!(everyone, "{seen:?}");
    let indices: BTreeSet<Option<usize>> = seen.values().copied().collect();
    assert_eq!(indices, (0..4).map(Some).collect(), "{seen:?}");
}

#[test]
fn in_process_workers_have_state_and_an_index_too() {
    let _w = watchdog("in_process_workers_have_state_and_an_index_too", LIMIT);
    let dir = marker_dir("state-threads");
    let pool = Pool::builder()
        .workers(2)
        .in_process(registry())
        .worker_state(start_tally, dir.display().to_string())
        .build()
        .unwrap();
    let reports = tally_every_worker(&pool);
    assert_counted_from_one(&reports);
    let indices: BTreeSet<Option<usize>> = reports.iter().map(|r| r.index).collect();
    assert_eq!(indices, [Some(0), Some(1)].into());
    assert!(reports.iter().all(|r| r.index == r.index_at_init));
    // The caller's thread is no worker.
    assert_eq!(procpool::worker::index(), None);
    pool.join();
    let me = std::process::id();
    for index in [0, 1] {
        assert!(
            wait_until(Duration::from_secs(30), || {
                tally_marker(&dir, me, Some(index)).exists()
            }),
            "thread worker {index} did not drop its state"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! Review of the deep pipelines (`dispatcher/pace.rs`, commit 7f2ad21):
//! hostile mixes of fast batches with crashes, kills, cancels, deadlines,
//! recycling and terminate, each checked against the one-outcome rule
//! with a record of what really ran; and two load-balance properties the
//! first version of deep pipelines gave up (kept since).

use std::time::Duration;

use procpool::Exit;
use procpool_tests::{
    Death, crash_running, init_store, record, recorded, sleep_ms, temp_path, watchdog,
};

use crate::{LIMIT, builder, counterless, pool, recording_pool};

/// Every id of `ok` ran exactly once; nothing ran more than once.
fn ran_once(file: &std::path::Path, ok: impl IntoIterator<Item = u64>) {
    let counts = recorded(file);
    for id in ok {
        assert_eq!(
            counts.get(&id),
            Some(&1),
            "item {id} delivered but ran {:?}",
            counts.get(&id)
        );
    }
    for (id, n) in &counts {
        assert_eq!(*n, 1, "item {id} ran {n} times");
    }
}

#[test]
fn deep_crashes_of_every_kind_among_an_apply_async_flood_cost_only_their_own_items() {
    let _w = watchdog(
        "deep_crashes_of_every_kind_among_an_apply_async_flood",
        LIMIT,
    );
    let file = temp_path("deep-flood-crash");
    let pool = recording_pool(2, &file);
    const N: u64 = 3_000;
    let mut crashes = Vec::new();
    let mut work = Vec::new();
    for i in 0..N {
        if i % 300 == 299 {
            let death = Death::ALL[(i / 300) as usize % Death::ALL.len()];
            crashes.push((death, pool.apply_async(crash_running, death).unwrap()));
        } else {
            work.push((i, pool.apply_async(record, i).unwrap()));
        }
    }
    for (i, h) in work {
        assert_eq!(h.get().ok(), Some(i), "item {i}");
    }
    for (death, h) in crashes {
        let e = h.get().unwrap_err();
        assert!(e.is_worker_died(), "{e}");
        assert_eq!(e.exit(), Some(death.exit()), "{e}");
    }
    ran_once(&file, []);
    assert_eq!(recorded(&file).len() as u64, N - N / 300);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn cancelling_one_of_two_fast_jobs_with_deep_pipes_ends_every_item_once() {
    let _w = watchdog("cancelling_one_of_two_fast_jobs_with_deep_pipes", LIMIT);
    let file = temp_path("deep-cancel");
    let pool = recording_pool(2, &file);
    const N: u64 = 4_000;
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            pool.with_chunksize(1)
                .imap_unordered(record, 0..N)
                .unwrap()
                .collect::<Vec<_>>()
        });
        let mut mine = pool
            .with_chunksize(1)
            .imap_unordered(record, N..2 * N)
            .unwrap();
        let mut got = Vec::new();
        for r in mine.by_ref().take(500) {
            got.push(r.unwrap());
        }
        mine.cancel();
        let mut cancelled = 0;
        for r in mine {
            match r {
                Ok(id) => got.push(id),
                Err(e) => {
                    assert!(e.is_cancelled(), "{e}");
                    cancelled += 1;
                }
            }
        }
        // Input pulled after the cancel is never submitted; each item
        // submitted has one outcome, and none that was not submitted ran.
        let mine_ran = recorded(&file).keys().filter(|&&id| id >= N).count() as u64;
        assert!(got.len() as u64 + cancelled <= N);
        assert!(mine_ran <= got.len() as u64 + cancelled, "{mine_ran} ran");
        let theirs: Vec<u64> = other
            .join()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(theirs.len() as u64, N);
        ran_once(&file, theirs.into_iter().chain(got));
    });
    let _ = std::fs::remove_file(&file);
}

#[test]
fn recycling_every_few_tasks_with_deep_pipes_runs_each_item_once() {
    let _w = watchdog("recycling_every_few_tasks_with_deep_pipes", LIMIT);
    let file = temp_path("deep-recycle");
    let pool = builder(2)
        .max_tasks_per_worker(37)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    const N: u64 = 2_000;
    let out: Vec<u64> = pool
        .with_chunksize(1)
        .imap_unordered(record, 0..N)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out.len() as u64, N);
    ran_once(&file, out);
    assert!(pool.stats().recycles >= N / 37 - 2, "{:?}", pool.stats());
    let _ = std::fs::remove_file(&file);
}

#[test]
fn deadline_kills_beside_a_fast_flood_cost_the_flood_nothing() {
    let _w = watchdog("deadline_kills_beside_a_fast_flood", LIMIT);
    let file = temp_path("deep-deadline");
    let pool = recording_pool(2, &file);
    const N: u64 = 4_000;
    std::thread::scope(|s| {
        let flood = s.spawn(|| {
            pool.with_chunksize(1)
                .imap_unordered(record, 0..N)
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        });
        for round in 0..6 {
            // One that passes its deadline (its worker is killed, with
            // whatever of the flood sits in its pipe) ...
            let hung = pool
                .with_timeout(Duration::from_millis(30))
                .apply_async(sleep_ms, 60_000)
                .unwrap();
            // ... and one that must not.
            let fine = pool
                .with_timeout(Duration::from_secs(20))
                .apply(sleep_ms, 1)
                .unwrap();
            assert_eq!(fine, 1, "round {round}");
            let e = hung.get().unwrap_err();
            assert!(e.is_timeout(), "round {round}: {e}");
        }
        let out = flood.join().unwrap();
        assert_eq!(out.len() as u64, N);
        ran_once(&file, out);
    });
    let _ = std::fs::remove_file(&file);
}

#[test]
fn terminate_with_deep_pipes_ends_every_item_once() {
    let _w = watchdog("terminate_with_deep_pipes_ends_every_item_once", LIMIT);
    let file = temp_path("deep-terminate");
    let pool = recording_pool(2, &file);
    const N: u64 = 200_000;
    let mut it = pool.with_chunksize(1).imap(record, 0..N).unwrap();
    let mut ok = Vec::new();
    for r in it.by_ref().take(2_000) {
        ok.push(r.unwrap());
    }
    pool.terminate();
    let mut failed = 0u64;
    for r in it {
        match r {
            Ok(id) => ok.push(id),
            Err(_) => failed += 1,
        }
    }
    assert_eq!(ok.len() as u64 + failed, N, "one outcome per item");
    ran_once(&file, ok);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_counterless_pool_under_a_fast_flood_with_crashes_runs_nothing_twice() {
    let _w = watchdog("a_counterless_pool_under_a_fast_flood_with_crashes", LIMIT);
    let file = temp_path("deep-counterless");
    let pool = counterless(2)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let mut work = Vec::new();
    let mut crashes = Vec::new();
    for i in 0..1_500u64 {
        if i % 250 == 249 {
            crashes.push(pool.apply_async(crash_running, Death::Segv).unwrap());
        } else {
            work.push((i, pool.apply_async(record, i).unwrap()));
        }
    }
    let mut ok = Vec::new();
    for (i, h) in work {
        match h.get() {
            Ok(id) => ok.push(id),
            // Uncounted: what was in the dead worker's pipe counts as run.
            Err(e) => assert!(e.is_worker_died(), "item {i}: {e}"),
        }
    }
    for h in crashes {
        assert_eq!(
            h.get().unwrap_err().exit(),
            Some(Exit::Signal(libc::SIGSEGV))
        );
    }
    ran_once(&file, ok);
    let _ = std::fs::remove_file(&file);
}

/// A worker running a long item is fed no deeper than two however fast
/// its past items were (a batch running past the mean counts as that
/// long), and an idle worker is served before a busy one (the first round
/// of `dispatch` is not deepened). Found by the review of 7f2ad21: items
/// submitted while a long item ran went into its pipe and waited seconds
/// while the other worker was idle.
#[test]
fn items_submitted_while_a_long_item_runs_do_not_queue_behind_it() {
    let _w = watchdog("items_submitted_while_a_long_item_runs", LIMIT);
    let pool = pool(2);
    // Both workers learn a fast pace.
    let warm = pool
        .with_chunksize(1)
        .imap_unordered(sleep_ms, (0..2_000).map(|_| 0))
        .unwrap()
        .count();
    assert_eq!(warm, 2_000);
    let started = |ms: u64| {
        let marker = temp_path("deep-long");
        let h = pool
            .apply_async(
                procpool_tests::announce_and_sleep,
                (marker.display().to_string(), ms),
            )
            .unwrap();
        (h, marker)
    };
    let (long, m1) = started(8_000);
    assert!(
        procpool_tests::wait_until(LIMIT, || m1.exists()),
        "it starts"
    );
    // One worker is idle: this one starts at once (allow 4 s of the long
    // item's 8: behind it, it would wait all 8).
    let (medium, m2) = started(1_000);
    let medium_started = procpool_tests::wait_until(Duration::from_secs(4), || m2.exists());
    let _ = std::fs::remove_file(&m1);
    let _ = std::fs::remove_file(&m2);
    assert!(
        medium_started,
        "an item waited behind a running 8 s item while the other worker was idle"
    );
    // Both workers are busy, one for a second more, one for seconds: these
    // go to the pipes and the queue now.
    let mut quick: Vec<_> = (0..40)
        .map(|_| pool.apply_async(sleep_ms, 0).unwrap())
        .collect();
    // The worker whose item ends in a second then runs 40 empty items in
    // far less than 4 s; only what was put in the long item's pipe is
    // still waiting then.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut stuck = 0;
    for h in &mut quick {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if h.get_timeout(left).is_err() {
            stuck += 1;
        }
    }
    for h in quick {
        let _ = h.get();
    }
    assert_eq!(medium.get().unwrap(), 1_000);
    assert_eq!(long.get().unwrap(), 8_000);
    assert!(
        stuck <= 1,
        "{stuck} quick items waited behind a running 8 s item while another worker was idle"
    );
}

/// The window of a job of small chunks follows the depth the pool feeds
/// its workers now: a slow job of chunk size 1 pulls no more of its input
/// than two batches a worker. Found by the review of 7f2ad21: the window
/// was sized for deep pipelines whatever the pace (66 items pulled).
#[test]
fn a_slow_job_of_chunk_size_one_pulls_no_more_input_than_two_deep_pipes_hold() {
    let _w = watchdog("a_slow_job_of_chunk_size_one_pulls_no_more_input", LIMIT);
    let pool = pool(2);
    let n = crate::pipeline::pulled_before_first_result(&pool);
    // Two workers, two batches each (the items take 200 ms: no deep
    // pipeline), as many again waiting: 2 * 2 * 2 + 2, and the one taken.
    assert!(
        n <= 2 * 2 * 2 + 2 + 1,
        "{n} items of a slow job of chunk size 1 were pulled from the input ahead of the first result"
    );
}

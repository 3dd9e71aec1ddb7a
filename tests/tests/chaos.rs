//! The chaos soak, in a process of its own so that its descriptor and
//! thread counts are its own: 100,000 tasks mixing normal, panicking,
//! crashing and hanging ones, while an outside thread SIGKILLs random
//! workers about ten times a second. Every task ends exactly once (the
//! record file proves what really ran); afterwards no worker process and
//! no zombie is left, and the descriptor and thread counts are back at
//! their baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use procpool::{Exit, Pool};
use procpool_tests::{
    Chaos, chaos, children_of_this_process, fd_and_thread_counts, init_store, recorded, temp_path,
    wait_until, watchdog,
};

const TASKS: u64 = 100_000;

fn kind(i: u64) -> Chaos {
    if i % 5000 == 17 {
        Chaos::Hang
    } else if i % 1000 == 13 {
        Chaos::Crash
    } else if i % 100 == 7 {
        Chaos::Panic
    } else {
        Chaos::Work
    }
}

/// SIGKILLs a random worker of `pool` every 100 ms until `stop`.
fn kill_randomly(pool: &Pool, stop: &AtomicBool, kills: &AtomicU64, mut seed: u64) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let pids = pool.worker_pids();
        if pids.is_empty() {
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = pids[(seed % pids.len() as u64) as usize];
        // The victim may have died and been reaped in between: then the
        // signal finds no process (ESRCH), which is fine.
        // SAFETY: kill only sends a signal.
        unsafe {
            libc::kill(victim as i32, libc::SIGKILL);
        }
        kills.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn chaos_soak() {
    let _w = watchdog("chaos_soak", Duration::from_secs(900));
    let baseline = fd_and_thread_counts();
    let file = temp_path("chaos");
    let pool = Pool::builder()
        .workers(4)
        .worker_program(env!("CARGO_BIN_EXE_fault-worker"))
        .initializer(init_store, file.display().to_string())
        .task_timeout(Duration::from_millis(200))
        .kill_grace(Duration::from_millis(100))
        .restart_limit(100_000, Duration::from_secs(60))
        .build()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let mut seen = std::collections::BTreeSet::new();
    let results = std::thread::scope(|s| {
        let killer = s.spawn(|| kill_randomly(&pool, &stop, &kills, 0x2545_f491_4f6c_dd1d));
        let results: Vec<_> = pool
            .with_chunksize(50)
            .imap(chaos, (0..TASKS).map(|i| (kind(i), i)))
            .unwrap()
            .inspect(|_| {
                if seen.len() < 10_000 {
                    seen.extend(pool.worker_pids());
                }
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        killer.join().unwrap();
        results
    });

    assert_eq!(results.len() as u64, TASKS);
    let counts = recorded(&file);
    let killed =
        |e: &procpool::Error| e.is_worker_died() && e.exit() == Some(Exit::Signal(libc::SIGKILL));
    let (mut ok, mut panics, mut crashes, mut timeouts, mut lost) = (0, 0, 0, 0, 0);
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        match (kind(i), r) {
            (Chaos::Work, Ok(v)) => {
                assert_eq!(*v, i);
                assert_eq!(
                    counts.get(&i),
                    Some(&1),
                    "task {i} ran {:?} times",
                    counts.get(&i)
                );
                ok += 1;
            }
            (Chaos::Panic, Err(e)) if e.is_panic() => panics += 1,
            (Chaos::Crash, Err(e)) if e.exit() == Some(Exit::Code(3)) => crashes += 1,
            (Chaos::Hang, Err(e)) if e.is_timeout() => timeouts += 1,
            (_, Err(e)) if killed(e) => {
                assert!(
                    counts.get(&i).copied().unwrap_or(0) <= 1,
                    "task {i} ran twice"
                );
                lost += 1;
            }
            (k, other) => panic!("task {i} ({k:?}) ended in {other:?}"),
        }
    }
    assert!(counts.values().all(|&c| c == 1), "a task ran twice");
    eprintln!(
        "chaos: {ok} ok, {panics} panics, {crashes} crashes, {timeouts} timeouts, \
         {lost} lost to {} outside kills; {:?}",
        kills.load(Ordering::Relaxed),
        pool.stats()
    );
    assert!(kills.load(Ordering::Relaxed) > 0 && crashes > 0 && timeouts > 0 && panics > 0);

    // The same under fire through `apply` from four threads: without a
    // deadline, a blocking apply takes idle workers on the direct lane.
    let lane_base = TASKS;
    let deaths_before = pool.stats().worker_deaths;
    stop.store(false, Ordering::Relaxed);
    let lane_results = std::thread::scope(|s| {
        let killer = s.spawn(|| kill_randomly(&pool, &stop, &kills, 0x9e37_79b9_7f4a_7c15));
        let callers: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = &pool;
                s.spawn(move || {
                    (0..5_000u64)
                        .map(|k| {
                            let id = lane_base + t * 5_000 + k;
                            let kind = match kind(id) {
                                Chaos::Hang => Chaos::Work,
                                other => other,
                            };
                            (id, kind, pool.apply(chaos, (kind, id)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = callers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        stop.store(true, Ordering::Relaxed);
        killer.join().unwrap();
        all
    });
    let counts = recorded(&file);
    assert_eq!(lane_results.len(), 20_000);
    let mut lane_lost = 0;
    for (id, kind, r) in &lane_results {
        match (kind, r) {
            (Chaos::Work, Ok(v)) => {
                assert_eq!(v, id);
                assert_eq!(
                    counts.get(id),
                    Some(&1),
                    "task {id} ran {:?} times",
                    counts.get(id)
                );
            }
            (Chaos::Panic, Err(e)) if e.is_panic() => {}
            (Chaos::Crash, Err(e)) if e.exit() == Some(Exit::Code(3)) => {}
            (_, Err(e)) if killed(e) => {
                assert!(
                    counts.get(id).copied().unwrap_or(0) <= 1,
                    "task {id} ran twice"
                );
                lane_lost += 1;
            }
            (k, other) => panic!("task {id} ({k:?}) ended in {other:?}"),
        }
    }
    assert!(counts.values().all(|&c| c == 1), "a task ran twice");
    eprintln!(
        "chaos, apply phase: {lane_lost} of 20000 lost to outside kills; {:?}",
        pool.stats()
    );
    assert!(
        pool.stats().worker_deaths > deaths_before,
        "no worker died in the apply phase"
    );

    drop(pool);
    for pid in &seen {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} left behind"
        );
    }
    assert!(
        children_of_this_process().is_empty(),
        "children left: {:?}",
        children_of_this_process()
    );
    // The watchdog's and the harness's threads are part of the baseline.
    assert!(
        wait_until(Duration::from_secs(10), || fd_and_thread_counts()
            == baseline),
        "descriptors and threads {:?}, baseline {baseline:?}",
        fd_and_thread_counts()
    );
    let _ = std::fs::remove_file(&file);
}

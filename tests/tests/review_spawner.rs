//! Review of the spawner thread (8aa5b10): a pool's workers started side by
//! side on the loop's thread and on a second thread of the pool, attacked
//! with real faults: a program that flickers in and out of existence while
//! groups start, SIGKILLs of every worker at once, drops racing the
//! replacements, recycling of every worker at once.
//!
//! A binary of its own (thread and child counts are process-wide); its
//! tests run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use procpool::{Pool, StartMethod};
use procpool_tests::{
    assert_pools_gone, children_of_this_process, fd_and_thread_counts, kill, kill_if_alive,
    open_fds, square, temp_path, threads_named, wait_until, watchdog, worker_index,
};

/// The spawner thread's name, as the kernel keeps it.
const SPAWNER: &str = "procpool-spawne";
const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");
const LIMIT: Duration = Duration::from_secs(180);

static SERIAL: Mutex<()> = Mutex::new(());

/// A private copy of the fault worker, so a test can make it vanish.
fn private_worker(name: &str) -> PathBuf {
    let dir = temp_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fault-worker");
    std::fs::copy(FAULT_WORKER, &path).unwrap();
    path
}

/// Renames `path` away and back every few hundred microseconds until
/// stopped: some starts of a group find it, some do not (ENOENT).
struct Flicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Flicker {
    fn start(path: &Path) -> Flicker {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p) = (stop.clone(), path.to_owned());
        let away = p.with_extension("away");
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                std::fs::rename(&p, &away).unwrap();
                std::thread::sleep(Duration::from_micros(150 + (n % 7) * 60));
                std::fs::rename(&away, &p).unwrap();
                std::thread::sleep(Duration::from_micros(150 + (n % 5) * 80));
                n += 1;
            }
        });
        Flicker {
            stop,
            thread: Some(thread),
            path: path.to_owned(),
        }
    }
}

impl Drop for Flicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        assert!(self.path.exists());
    }
}

/// Each live worker's index, asked of the workers themselves until all
/// `n` answered (pids that are not live any more are dropped).
fn indices(pool: &Pool, n: usize) -> BTreeMap<u32, Option<usize>> {
    let mut seen = BTreeMap::new();
    let all = wait_until(Duration::from_secs(60), || {
        if let Ok(r) = pool.with_chunksize(1).map(worker_index, vec![(); 8 * n]) {
            for (pid, index) in r {
                seen.insert(pid, index);
            }
        }
        let live: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
        seen.retain(|p, _| live.contains(p));
        seen.len() == n && live.len() == n
    });
    assert!(
        all,
        "every worker answered: {seen:?} of {:?}",
        pool.worker_pids()
    );
    seen
}

fn assert_indices_are_0_to(pool: &Pool, n: usize) {
    let seen = indices(pool, n);
    let got: Vec<Option<usize>> = seen.values().copied().collect();
    let set: BTreeSet<Option<usize>> = got.iter().copied().collect();
    assert_eq!(
        set,
        (0..n).map(Some).collect::<BTreeSet<_>>(),
        "indices of the live workers: {seen:?}"
    );
}

/// Builds with the program flickering: each build either serves all its
/// workers with indices 0..n, or fails once as a start-up error; nothing
/// is left behind either way.
#[test]
fn builds_whose_group_partly_fails_to_exec() {
    let _s = SERIAL.lock();
    let _w = watchdog("builds_whose_group_partly_fails_to_exec", LIMIT);
    let program = private_worker("flicker-build");
    let baseline = fd_and_thread_counts();
    let (mut ok, mut failed) = (0, 0);
    {
        let _f = Flicker::start(&program);
        for _ in 0..60 {
            match Pool::builder().workers(6).worker_program(&program).build() {
                Ok(pool) => {
                    ok += 1;
                    assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 99 * 99);
                    drop(pool);
                }
                Err(e) => {
                    failed += 1;
                    assert!(e.is_startup(), "{e}");
                }
            }
            assert!(
                children_of_this_process().is_empty(),
                "{:?}",
                children_of_this_process()
            );
        }
    }
    eprintln!("builds: {ok} ok, {failed} failed");
    assert!(failed > 0, "the flicker made no build fail");
    assert_pools_gone(baseline.0);
}

/// Every worker SIGKILLed, round after round, while the program flickers:
/// the replacements of a group partly fail and are retried; once the
/// program stays, the pool is whole again, indices 0..n, every task
/// submitted meanwhile ended in a result or an error.
#[test]
fn replacement_groups_that_partly_fail_to_exec() {
    let _s = SERIAL.lock();
    let _w = watchdog("replacement_groups_that_partly_fail_to_exec", LIMIT);
    let program = private_worker("flicker-replace");
    let baseline = fd_and_thread_counts();
    let n = 6;
    let pool = Pool::builder()
        .workers(n)
        .worker_program(&program)
        .restart_limit(100_000, Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(threads_named(SPAWNER), 1);
    {
        let _f = Flicker::start(&program);
        for _ in 0..30 {
            for pid in pool.worker_pids() {
                kill_if_alive(pid, libc::SIGKILL);
            }
            // Work meanwhile: every item ends, in a result or an error.
            let r = pool.with_chunksize(1).map(square, 0..50u64);
            if let Ok(v) = r {
                assert_eq!(v[49], 49 * 49);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = pool.stats();
    eprintln!("{stats:?}");
    assert!(
        stats.start_failures > 0,
        "the flicker failed no start: {stats:?}"
    );
    assert!(
        wait_until(Duration::from_secs(60), || pool.worker_pids().len() == n),
        "{:?}",
        pool.worker_pids()
    );
    assert_eq!(pool.map(square, 0..1000u64).unwrap()[999], 999 * 999);
    assert_indices_are_0_to(&pool, n);
    assert_eq!(threads_named(SPAWNER), 1);
    drop(pool);
    assert_pools_gone(baseline.0);
}

/// Every worker used up at once (`max_tasks_per_worker`): their
/// replacements are due together, again and again.
#[test]
fn recycling_every_worker_at_once() {
    let _s = SERIAL.lock();
    let _w = watchdog("recycling_every_worker_at_once", LIMIT);
    let baseline = fd_and_thread_counts();
    let n = 4;
    let pool = Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    for round in 0..20u64 {
        let v = pool
            .with_chunksize(1)
            .map(square, (0..n as u64).map(|x| x + round))
            .unwrap();
        assert_eq!(v.len(), n);
    }
    let stats = pool.stats();
    assert_eq!(stats.start_failures, 0, "{stats:?}");
    assert!(stats.recycles >= 20, "{stats:?}");
    drop(pool);
    // A fresh pool with recycling after 3: its indices stay 0..n.
    let pool = Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    for _ in 0..10 {
        pool.with_chunksize(1).map(square, 0..40u64).unwrap();
    }
    // Each answer comes from a worker about to be replaced: check the pids
    // that answer carry distinct indices within one batch of n.
    let r = pool
        .with_chunksize(1)
        .map(worker_index, vec![(); n])
        .unwrap();
    let mut by_pid = BTreeMap::new();
    for (pid, i) in r {
        by_pid.insert(pid, i);
    }
    let idx: Vec<_> = by_pid.values().collect();
    let set: BTreeSet<_> = idx.iter().collect();
    assert_eq!(
        idx.len(),
        set.len(),
        "two live workers share an index: {by_pid:?}"
    );
    assert!(
        by_pid.values().all(|i| i.is_some_and(|i| i < n)),
        "{by_pid:?}"
    );
    drop(pool);
    assert_pools_gone(baseline.0);
}

/// The pool dropped (or terminated from another thread) right after every
/// worker was SIGKILLed, while their replacements are being started.
#[test]
fn drop_and_terminate_racing_a_replacement_group() {
    let _s = SERIAL.lock();
    let _w = watchdog("drop_and_terminate_racing_a_replacement_group", LIMIT);
    let baseline = fd_and_thread_counts();
    for round in 0..40 {
        let pool = Arc::new(
            Pool::builder()
                .workers(4)
                .worker_program(FAULT_WORKER)
                .build()
                .unwrap(),
        );
        let pids = pool.worker_pids();
        let work = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let r = pool.with_chunksize(1).map(square, 0..2000u64);
                match r {
                    Ok(v) => assert_eq!(v.len(), 2000),
                    Err(e) => assert!(
                        e.is_terminated() || e.is_worker_died() || e.is_broken(),
                        "{e}"
                    ),
                }
            })
        };
        std::thread::sleep(Duration::from_micros(200 * (round % 5)));
        for pid in pids {
            kill(pid, libc::SIGKILL);
        }
        if round % 2 == 0 {
            pool.terminate();
        } else {
            std::thread::sleep(Duration::from_micros(100 * (round % 7)));
        }
        work.join().unwrap();
        drop(Arc::try_unwrap(pool).unwrap());
        assert!(
            children_of_this_process().is_empty(),
            "round {round}: {:?}",
            children_of_this_process()
        );
    }
    assert_pools_gone(baseline.0);
}

/// A worker started by the spawner thread inherits exactly what one
/// started by the loop's thread does: no descriptor of a sibling's start.
#[test]
fn workers_started_side_by_side_inherit_the_same_descriptors() {
    let _s = SERIAL.lock();
    let _w = watchdog(
        "workers_started_side_by_side_inherit_the_same_descriptors",
        LIMIT,
    );
    let shape = |fds: &Vec<String>| -> Vec<String> {
        fds.iter()
            .map(|l| {
                let (n, t) = l.split_once(" -> ").unwrap();
                let kind = t.split(':').next().unwrap().split('[').next().unwrap();
                format!("{n} {kind}")
            })
            .collect()
    };
    let one = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    one.apply(open_fds, ()).unwrap();
    let alone = shape(&procpool_tests::fd_table(one.worker_pids()[0]));
    drop(one);
    for _ in 0..5 {
        let n = 8;
        let pool = Pool::builder()
            .workers(n)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap();
        // Every worker has shaken hands (the build returned), so its
        // descriptor table is settled; read it from here.
        pool.map(square, 0..100u64).unwrap();
        let tables: BTreeMap<u32, Vec<String>> = pool
            .worker_pids()
            .into_iter()
            .map(|p| (p, procpool_tests::fd_table(p)))
            .collect();
        assert_eq!(tables.len(), n);
        for (pid, fds) in &tables {
            assert_eq!(shape(fds), alone, "worker {pid}: {fds:?}");
        }
        drop(pool);
    }
}

/// The zygote's forks and in-process workers start one at a time: no
/// spawner thread for them.
#[test]
fn zygote_and_in_process_pools_have_no_spawner() {
    let _s = SERIAL.lock();
    let _w = watchdog("zygote_and_in_process_pools_have_no_spawner", LIMIT);
    let baseline = fd_and_thread_counts();
    let z = Pool::builder()
        .workers(4)
        .worker_program(FAULT_WORKER)
        .start_method(StartMethod::Zygote)
        .build()
        .unwrap();
    assert_eq!(z.map(square, 0..100u64).unwrap()[10], 100);
    assert_eq!(threads_named(SPAWNER), 0);
    for pid in z.worker_pids() {
        kill(pid, libc::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(30), || z
        .worker_pids()
        .len()
        == 4));
    assert_eq!(z.map(square, 0..100u64).unwrap()[10], 100);
    assert_indices_are_0_to(&z, 4);
    drop(z);
    let t = Pool::builder()
        .workers(4)
        .in_process(procpool_tests::registry())
        .build()
        .unwrap();
    assert_eq!(t.map(square, 0..100u64).unwrap()[10], 100);
    assert_eq!(threads_named(SPAWNER), 0);
    drop(t);
    assert_pools_gone(baseline.0);
}

/// Several replacements due at once, past the restart limit: the pool
/// breaks once, the work in flight ends in an error, nothing hangs.
#[test]
fn a_group_of_replacements_past_the_restart_limit() {
    let _s = SERIAL.lock();
    let _w = watchdog("a_group_of_replacements_past_the_restart_limit", LIMIT);
    let program = private_worker("limit");
    let baseline = fd_and_thread_counts();
    let pool = Pool::builder()
        .workers(6)
        .worker_program(&program)
        .restart_limit(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let away = program.with_extension("away");
    std::fs::rename(&program, &away).unwrap();
    let work = pool
        .with_chunksize(1)
        .map_async(procpool_tests::sleep_ms, vec![200u64; 12])
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for pid in pool.worker_pids() {
        kill(pid, libc::SIGKILL);
    }
    let started = Instant::now();
    let r = work.get();
    assert!(r.is_err(), "{r:?}");
    let stats = pool.stats();
    eprintln!(
        "{stats:?} after {:?}: {}",
        started.elapsed(),
        r.unwrap_err()
    );
    let e = pool.apply(square, 3).unwrap_err();
    assert!(e.is_broken(), "{e}");
    assert!(e.to_string().contains("failed to start"), "{e}");
    std::fs::rename(&away, &program).unwrap();
    drop(pool);
    assert_pools_gone(baseline.0);
}

/// Some workers of each replacement group die before their handshake
/// (fault-worker `--crash-at start`, starts 8 to 11 die): they
/// are retried, the pool comes back whole with indices 0..n.
#[test]
fn replacement_groups_with_some_deaths_before_the_handshake() {
    let _s = SERIAL.lock();
    let _w = watchdog(
        "replacement_groups_with_some_deaths_before_the_handshake",
        LIMIT,
    );
    let baseline = fd_and_thread_counts();
    let counter = temp_path("crash-counter");
    let n = 6;
    for death in ["exit:3", "abort", "kill"] {
        let _ = std::fs::remove_file(&counter);
        let pool = Pool::builder()
            .workers(n)
            .worker_program(FAULT_WORKER)
            .worker_args([
                "--crash-at",
                "start",
                "--death",
                death,
                "--counter",
                counter.to_str().unwrap(),
                "--skip",
                "7",
                "--times",
                "4",
            ])
            .restart_limit(1000, Duration::from_secs(60))
            .build()
            .unwrap();
        for _ in 0..3 {
            // Every worker ready (it answered) before the next kill.
            assert_indices_are_0_to(&pool, n);
            let killed = pool.worker_pids();
            for &pid in &killed {
                kill_if_alive(pid, libc::SIGKILL);
            }
            assert!(
                wait_until(Duration::from_secs(30), || {
                    let now = pool.worker_pids();
                    now.len() == n && now.iter().all(|p| !killed.contains(p))
                }),
                "{:?}",
                pool.worker_pids()
            );
        }
        let stats = pool.stats();
        // (Concurrent starts append to the counter and read its length
        // racily, so "starts 8 to 11" is approximate.)
        assert!(stats.start_failures >= 1, "{death}: {stats:?}");
        assert_eq!(pool.map(square, 0..1000u64).unwrap()[999], 999 * 999);
        assert_indices_are_0_to(&pool, n);
        drop(pool);
    }
    // And at build time: the group's 3rd start dies, the build fails once.
    for death in ["exit:3", "segv"] {
        let _ = std::fs::remove_file(&counter);
        let err = Pool::builder()
            .workers(n)
            .worker_program(FAULT_WORKER)
            .worker_args([
                "--crash-at",
                "handshake",
                "--death",
                death,
                "--counter",
                counter.to_str().unwrap(),
                "--skip",
                "2",
                "--times",
                "1",
            ])
            .build()
            .unwrap_err();
        assert!(err.is_startup(), "{err}");
    }
    assert_pools_gone(baseline.0);
}

/// Every worker past its memory limit at once: replaced as a group.
#[test]
fn every_worker_past_its_memory_limit_at_once() {
    let _s = SERIAL.lock();
    let _w = watchdog("every_worker_past_its_memory_limit_at_once", LIMIT);
    let baseline = fd_and_thread_counts();
    let n = 4;
    let pool = Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .worker_memory_limit(512 << 20)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = pool
            .with_chunksize(1)
            .map_async(procpool_tests::allocate_mib, vec![2048u64; n])
            .unwrap()
            .get();
        assert!(r.is_err(), "{r:?}");
        assert!(wait_until(Duration::from_secs(30), || pool
            .worker_pids()
            .len()
            == n));
    }
    assert_eq!(pool.map(square, 0..100u64).unwrap()[10], 100);
    assert_indices_are_0_to(&pool, n);
    drop(pool);
    assert_pools_gone(baseline.0);
}

/// `join` right after every worker was SIGKILLed: the replacements (or
/// none) start, the queued work ends, join returns.
#[test]
fn join_racing_a_replacement_group() {
    let _s = SERIAL.lock();
    let _w = watchdog("join_racing_a_replacement_group", LIMIT);
    let baseline = fd_and_thread_counts();
    for round in 0..30u64 {
        let pool = Pool::builder()
            .workers(4)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap();
        let work = pool.with_chunksize(1).map_async(square, 0..200u64).unwrap();
        std::thread::sleep(Duration::from_micros(100 * (round % 4)));
        for pid in pool.worker_pids() {
            kill(pid, libc::SIGKILL);
        }
        pool.join();
        match work.get() {
            Ok(v) => assert_eq!(v.len(), 200),
            Err(e) => assert!(e.is_worker_died(), "{e}"),
        }
        drop(pool);
        assert!(children_of_this_process().is_empty());
    }
    assert_pools_gone(baseline.0);
}

/// A tight start-up timeout for a big group on a busy machine: either all
/// shake hands in time or the build fails once; nothing left.
#[test]
fn a_big_group_against_a_tight_startup_timeout() {
    let _s = SERIAL.lock();
    let _w = watchdog("a_big_group_against_a_tight_startup_timeout", LIMIT);
    let baseline = fd_and_thread_counts();
    let (mut ok, mut failed) = (0, 0);
    for i in 0..20u64 {
        match Pool::builder()
            .workers(12)
            .worker_program(FAULT_WORKER)
            .startup_timeout(Duration::from_millis(20 + 10 * (i % 5)))
            .build()
        {
            Ok(p) => {
                ok += 1;
                assert_indices_are_0_to(&p, 12);
            }
            Err(e) => {
                failed += 1;
                assert!(e.is_startup(), "{e}");
            }
        }
        assert!(children_of_this_process().is_empty());
    }
    eprintln!("tight start-ups: {ok} ok, {failed} failed");
    assert_pools_gone(baseline.0);
}

/// The program hosting a pool is SIGKILLed after a group of replacements
/// was started (by the spawner thread): every worker dies with it.
#[test]
fn host_killed_after_a_replacement_group_leaves_no_orphan() {
    if std::env::var_os("REVIEW_SPAWNER_HOST").is_some() {
        return host();
    }
    let _s = SERIAL.lock();
    let _w = watchdog(
        "host_killed_after_a_replacement_group_leaves_no_orphan",
        LIMIT,
    );
    use std::io::BufRead;
    for _ in 0..5 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "host_killed_after_a_replacement_group_leaves_no_orphan",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("REVIEW_SPAWNER_HOST", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the host ended");
            if line.contains("pids ") {
                break;
            }
        }
        let at = line.find("pids ").unwrap() + 5;
        let pids: Vec<u32> = line[at..]
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 8, "{line}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || pids
                .iter()
                .all(|&p| procpool_tests::not_running(p))),
            "orphans: {:?}",
            pids.iter()
                .filter(|&&p| !procpool_tests::not_running(p))
                .collect::<Vec<_>>()
        );
    }
}

fn host() {
    use std::io::Write;
    let n = 8;
    let pool = Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    let first = pool.worker_pids();
    for &p in &first {
        kill(p, libc::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(30), || {
        let now = pool.worker_pids();
        now.len() == n && now.iter().all(|p| !first.contains(p))
    }));
    let _hung: Vec<_> = (0..n)
        .map(|_| {
            pool.apply_async(procpool_tests::sleep_ms, 3_600_000)
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let pids = pool.worker_pids();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "pids {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    )
    .unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::park();
    }
}

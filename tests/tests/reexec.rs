//! Re-exec mode: this test binary is its own worker program.
//!
//! A custom harness (`harness = false`): `main` calls
//! `procpool::serve_if_worker` first, as a user's program would, so the
//! pool can start this very executable as its workers. Scenarios:
//!
//! - a pool in re-exec mode maps correctly, from worker processes running
//!   this same executable;
//! - the fork hazard of a multi-threaded parent, reproduced: eight threads
//!   keep a std mutex, a parking_lot mutex, the stdout lock and a logger's
//!   lock held while the main thread starts pool after pool (at least 200
//!   worker spawns) whose tasks take the same locks. A worker made by a
//!   bare fork would inherit some of them locked and hang; exec'd workers
//!   never do;
//! - a process started as a worker that forgot `serve_if_worker` gets a
//!   clear error from `build()` instead of starting workers of its own;
//! - printing tasks, and descriptor hygiene, in this mode too;
//! - parent death: a parent killed with SIGKILL while its workers are busy
//!   leaves no worker behind (checked from outside that parent);
//! - a spawn that fails for lack of descriptors (`RLIMIT_NOFILE`) is
//!   retried with backoff, and the pool recovers when descriptors are back;
//! - the zygote start method in re-exec mode: the zygote is this
//!   executable too; the same lock-holding threads beside at least 200
//!   forked worker starts, and a SIGKILLed parent leaves neither zygote
//!   nor worker behind.
//!
//! Every scenario runs under a watchdog. The last line is the usual
//! `N passed, M failed`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use procpool::{Pool, Registry, StartMethod};
use procpool_tests::{fd_table, noisy, watchdog};

static STD_LOCK: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
static PL_LOCK: parking_lot::Mutex<u64> = parking_lot::const_mutex(0);

/// A logger whose every call takes a lock, as real loggers do.
struct LockingLogger {
    lines: parking_lot::Mutex<u64>,
}

impl log::Log for LockingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, _: &log::Record<'_>) {
        *self.lines.lock() += 1;
    }
    fn flush(&self) {}
}

static LOGGER: LockingLogger = LockingLogger {
    lines: parking_lot::const_mutex(0),
};

fn square(x: u64) -> u64 {
    x * x
}

/// Takes every lock the parent's threads hold: in a forked child any of
/// them could be held forever; in an exec'd worker they are fresh.
fn take_every_lock(x: u64) -> u32 {
    *STD_LOCK.lock().unwrap() += x;
    *PL_LOCK.lock() += x;
    let _ = std::io::stdout().lock().flush();
    log::info!("worker {} logs", std::process::id());
    *LOGGER.lines.lock() += 1;
    std::process::id()
}

fn open_fds() -> Vec<String> {
    fd_table(std::process::id())
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn registry() -> Registry {
    Registry::new()
        .task(square)
        .task(take_every_lock)
        .task(noisy)
        .task(open_fds)
        .task(sleep_ms)
}

const LIMIT: Duration = Duration::from_secs(240);

fn main() {
    let tasks = registry();
    // Before serve_if_worker, on purpose: see forgot_serve_if_worker.
    if std::env::args().any(|a| a == "--forgot-serve-if-worker") {
        // Started with the worker variable set, but behaving like a program
        // that never calls serve_if_worker: building a pool must fail.
        match Pool::builder().workers(1).build() {
            Ok(_) => std::process::exit(3),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(if e.is_startup() { 0 } else { 4 });
            }
        }
    }

    procpool::serve_if_worker(&tasks);

    if std::env::args().any(|a| a == "--busy-parent") {
        // The parent to be killed: busy workers, their pids on stdout (and,
        // with `--zygote`, the zygote's pid first).
        let zygote = std::env::args().any(|a| a == "--zygote");
        let method = if zygote {
            StartMethod::Zygote
        } else {
            StartMethod::Exec
        };
        let pool = Pool::builder()
            .workers(2)
            .start_method(method)
            .build()
            .unwrap();
        if zygote {
            print!("{} ", parent_of(pool.worker_pids()[0]));
        }
        let _busy: Vec<_> = (0..4)
            .map(|_| pool.apply_async(sleep_ms, 600_000).unwrap())
            .collect();
        let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
        println!("{}", pids.join(" "));
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(600));
        std::process::exit(5);
    }

    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));

    let scenarios: [(&str, fn()); 8] = [
        (
            "reexec_pool_maps_in_worker_processes",
            reexec_pool_maps_in_worker_processes,
        ),
        ("fork_hazard_never_deadlocks", fork_hazard_never_deadlocks),
        (
            "a_worker_that_forgot_serve_if_worker_cannot_build_a_pool",
            forgot_serve_if_worker,
        ),
        (
            "reexec_workers_keep_stdio_and_descriptors_clean",
            reexec_stdio_and_descriptors,
        ),
        (
            "workers_die_with_a_sigkilled_parent",
            workers_die_with_a_sigkilled_parent,
        ),
        (
            "a_spawn_without_descriptors_is_retried",
            a_spawn_without_descriptors_is_retried,
        ),
        (
            "zygote_fork_hazard_never_deadlocks",
            zygote_fork_hazard_never_deadlocks,
        ),
        (
            "zygote_and_workers_die_with_a_sigkilled_parent",
            zygote_and_workers_die_with_a_sigkilled_parent,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        let _w = watchdog(name, LIMIT);
        match std::panic::catch_unwind(f) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn reexec_pool_maps_in_worker_processes() {
    let pool = Pool::builder().workers(2).build().unwrap();
    assert_eq!(
        pool.map(square, 0..1000u64).unwrap(),
        (0..1000u64).map(|x| x * x).collect::<Vec<_>>()
    );
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    for pid in pool.worker_pids() {
        assert_ne!(pid, std::process::id());
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), me);
    }
}

fn fork_hazard_never_deadlocks() {
    fork_hazard(StartMethod::Exec, 2);
}

/// The same hazard beside a zygote pool: the parent never forks, and the
/// zygote forks only with one thread, so no worker inherits a held lock.
fn zygote_fork_hazard_never_deadlocks() {
    fork_hazard(StartMethod::Zygote, 8);
}

/// The pid of `pid`'s parent.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fork_hazard(method: StartMethod, workers: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let holds = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let stop = stop.clone();
            let holds = holds.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Hold each lock across a short pause, so a fork at any
                    // moment would copy some of them locked.
                    match t % 4 {
                        0 => {
                            let _g = STD_LOCK.lock().unwrap();
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        1 => {
                            let _g = PL_LOCK.lock();
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        2 => {
                            let _g = std::io::stdout().lock();
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        _ => {
                            log::info!("thread {t} logs");
                            let _g = LOGGER.lines.lock();
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                    holds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut spawned = 0;
    let mut pools = 0;
    while spawned < 200 {
        let pool = Pool::builder()
            .workers(workers)
            .start_method(method)
            .build()
            .unwrap();
        let pids = pool
            .with_chunksize(1)
            .map(take_every_lock, 0..2 * workers as u64)
            .unwrap();
        assert_eq!(pids.len(), 2 * workers);
        let stats = pool.stats();
        if method == StartMethod::Zygote {
            // Every worker was forked (none fell back to exec).
            assert_eq!(stats.workers_forked, stats.workers_started);
        }
        spawned += stats.workers_started;
        pools += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        spawned >= 200 && pools >= 200 / workers as u64,
        "{spawned} spawns in {pools} pools"
    );
    assert!(
        holds.load(Ordering::Relaxed) > 0,
        "the lock-holding threads ran"
    );
}

fn forgot_serve_if_worker() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--forgot-serve-if-worker")
        .env("PROCPOOL_WORKER", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("serve_if_worker"), "{stderr}");
}

fn reexec_stdio_and_descriptors() {
    let pool = Pool::builder().workers(2).build().unwrap();
    assert_eq!(
        pool.map(noisy, 0..4u64).unwrap(),
        (0..4u64).collect::<Vec<_>>()
    );
    for pid in pool.worker_pids() {
        let table = fd_table(pid);
        let numbers: Vec<&str> = table
            .iter()
            .map(|l| l.split_once(" -> ").unwrap().0)
            .collect();
        assert_eq!(
            numbers,
            ["0", "1", "2", "3", "4"],
            "worker {pid}: {table:?}"
        );
    }
    let fds = pool.apply(open_fds, ()).unwrap();
    assert_eq!(fds[0], "0 -> /dev/null");
}

fn workers_die_with_a_sigkilled_parent() {
    sigkilled_parent(&[]);
}

fn zygote_and_workers_die_with_a_sigkilled_parent() {
    sigkilled_parent(&["--zygote"]);
}

fn sigkilled_parent(args: &[&str]) {
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--busy-parent")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2 + args.len(), "{line:?}");
    assert!(pids.iter().all(|&p| procpool_tests::process_exists(p)));
    procpool_tests::kill(parent.id(), libc::SIGKILL);
    assert!(parent.wait().unwrap().code().is_none());
    assert!(
        procpool_tests::wait_until(Duration::from_secs(10), || pids
            .iter()
            .all(|&p| procpool_tests::not_running(p))),
        "workers (or zygote) {pids:?} outlived their parent"
    );
}

fn nofile_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

fn set_nofile_limit(lim: libc::rlimit) {
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn a_spawn_without_descriptors_is_retried() {
    let pool = Pool::builder()
        .workers(1)
        .restart_limit(1000, Duration::from_secs(60))
        .build()
        .unwrap();
    let victim = pool.worker_pids()[0];
    let saved = nofile_limit();
    // No new descriptor can be created: pipes for a replacement fail with
    // EMFILE.
    set_nofile_limit(libc::rlimit {
        rlim_cur: 3,
        rlim_max: saved.rlim_max,
    });
    procpool_tests::kill(victim, libc::SIGKILL);
    let failed =
        procpool_tests::wait_until(Duration::from_secs(30), || pool.stats().start_failures >= 2);
    set_nofile_limit(saved);
    assert!(failed, "spawns did not fail: {:?}", pool.stats());
    assert_eq!(pool.apply(square, 11).unwrap(), 121);
    let stats = pool.stats();
    assert!(stats.workers_started >= 2, "{stats:?}");
}

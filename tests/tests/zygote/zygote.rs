//! The zygote's own scenarios: forked workers, the one-thread check and
//! its fallback, the zygote's death, the pool's death, and the hazards a
//! bare fork of the parent would meet.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Once;
use std::time::Duration;

use parking_lot::Mutex;
use procpool::{Pool, StartMethod};
use procpool_tests::{
    init_print_partial, init_start_thread, init_store, init_value, kill, noisy, not_running,
    parent_pid, process_exists, sleep_ms, square, temp_path, wait_until, watchdog, worker_index,
};

use crate::{FAULT_WORKER, LIMIT, builder};

/// The parent pid of process `pid`, from `/proc`.
fn ppid_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The zygote worker `pid` was forked from: its parent, if that is a
/// child of this process (a worker whose zygote died has another parent:
/// init, or a subreaper).
fn zygote_parent(pid: u32) -> Option<u32> {
    let me = std::process::id();
    let parent = ppid_of(pid);
    (parent != me && ppid_of(parent) == me).then_some(parent)
}

/// The zygote of a pool whose workers were all forked: their one parent.
fn zygote_of(pool: &Pool) -> u32 {
    let pids = pool.worker_pids();
    let parents: HashSet<Option<u32>> = pids.iter().map(|&p| zygote_parent(p)).collect();
    assert_eq!(parents.len(), 1, "one zygote: {parents:?}");
    parents
        .into_iter()
        .next()
        .unwrap()
        .unwrap_or_else(|| panic!("workers {pids:?} were not forked by a zygote of ours"))
}

/// SIGKILLs one worker of `pool` and waits until a replacement has served
/// in its place. (Killed before its handshake, a replacement would count
/// as a failed start, and a few of those break a pool by design.)
fn kill_and_replace(pool: &Pool) {
    let before = pool.worker_pids();
    kill(before[0], libc::SIGKILL);
    assert!(wait_until(LIMIT, || {
        let pids = pool.worker_pids();
        pids.len() == pool.workers() && !pids.contains(&before[0])
    }));
    let new = pool
        .worker_pids()
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("a replacement");
    assert!(wait_until(LIMIT, || {
        let pids = pool
            .with_chunksize(1)
            .map(procpool_tests::pid, vec![(); 4 * pool.workers()]);
        pids.unwrap().contains(&new)
    }));
}

/// Records of this test process's logger, for the tests that look for
/// one. (Installed once; other tests' records land here too.)
struct Capture(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

fn logged(needle: &str) -> Vec<(log::Level, String)> {
    CAPTURE
        .0
        .lock()
        .iter()
        .filter(|(_, m)| m.contains(needle))
        .cloned()
        .collect()
}

#[test]
fn workers_are_forked_from_one_zygote_with_the_initializers_state() {
    let _w = watchdog(
        "workers_are_forked_from_one_zygote_with_the_initializers_state",
        LIMIT,
    );
    let pool = builder(3)
        .initializer(init_store, "made once".to_owned())
        .build()
        .unwrap();
    let want: Vec<u64> = (0..100u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..100u64).unwrap(), want);
    let zygote = zygote_of(&pool);
    // What the initializer stored in the zygote, every worker has.
    let values = pool
        .with_chunksize(1)
        .map(init_value, vec![(); 30])
        .unwrap();
    assert!(
        values.iter().all(|v| v.as_deref() == Some("made once")),
        "{values:?}"
    );
    // Each worker knows its own index, though the zygote has none.
    let indices: HashSet<Option<usize>> = pool
        .with_chunksize(1)
        .map(worker_index, vec![(); 30])
        .unwrap()
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    assert!(
        indices.iter().all(|i| matches!(i, Some(0..=2))),
        "{indices:?}"
    );
    let stats = pool.stats();
    assert_eq!((stats.workers_started, stats.workers_forked), (3, 3));
    pool.join();
    // The zygote ends with the pool.
    assert!(wait_until(LIMIT, || not_running(zygote)));
}

#[test]
fn a_replacement_is_forked_and_its_death_is_reported_exactly() {
    let _w = watchdog(
        "a_replacement_is_forked_and_its_death_is_reported_exactly",
        LIMIT,
    );
    let pool = builder(2)
        .initializer(init_store, "x".to_owned())
        .build()
        .unwrap();
    let zygote = zygote_of(&pool);
    let err = pool.apply(procpool_tests::segfault, ()).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    // The zygote reaped it and said how it ended.
    assert_eq!(
        err.exit(),
        Some(procpool::Exit::Signal(libc::SIGSEGV)),
        "{err}"
    );
    assert!(wait_until(LIMIT, || pool.worker_pids().len() == 2));
    assert_eq!(zygote_of(&pool), zygote);
    assert_eq!(pool.stats().workers_forked, 3);
    // The replacement has the zygote's state, without running the
    // initializer again.
    let values = pool.with_chunksize(1).map(init_value, vec![(); 8]).unwrap();
    assert!(values.iter().all(|v| v.as_deref() == Some("x")));
}

#[test]
fn a_zygote_whose_initializer_left_a_thread_running_never_forks() {
    let _w = watchdog(
        "a_zygote_whose_initializer_left_a_thread_running_never_forks",
        LIMIT,
    );
    capture_logs();
    let pool = builder(3)
        .initializer(init_start_thread, "a-library-pool".to_owned())
        .build()
        .unwrap();
    // Every worker was exec'd (and ran the initializer itself).
    assert_eq!(pool.stats().workers_forked, 0);
    for pid in pool.worker_pids() {
        assert_eq!(ppid_of(pid), std::process::id(), "worker {pid}");
    }
    let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..1000u64).unwrap(), want);
    // Replacements too.
    kill_and_replace(&pool);
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    assert_eq!(pool.stats().workers_forked, 0);
    let said = logged("threads after its initializer");
    assert!(
        said.iter()
            .any(|(level, m)| *level == log::Level::Error && m.contains("has 2 threads")),
        "{said:?}"
    );
}

#[test]
fn a_dead_zygote_costs_no_running_worker_and_is_started_again() {
    let _w = watchdog(
        "a_dead_zygote_costs_no_running_worker_and_is_started_again",
        LIMIT * 2,
    );
    let pool = builder(2).build().unwrap();
    let zygote = zygote_of(&pool);
    let workers = pool.worker_pids();
    // A task runs across the zygote's death.
    let running = pool.apply_async(sleep_ms, 300).unwrap();
    kill(zygote, libc::SIGKILL);
    assert!(wait_until(LIMIT, || not_running(zygote)));
    assert_eq!(running.get().unwrap(), 300);
    let want: Vec<u64> = (0..200u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..200u64).unwrap(), want);
    assert_eq!(pool.worker_pids(), workers, "the workers served on");
    // Replacements: by exec while the zygote is down, forked again from a
    // new zygote once it is back.
    let mut exec_seen = false;
    let back = wait_until(LIMIT, || {
        kill_and_replace(&pool);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        let pids = pool.worker_pids();
        let parents: Vec<u32> = pids.iter().map(|&p| ppid_of(p)).collect();
        assert!(!parents.contains(&zygote), "{parents:?}");
        exec_seen |= parents.contains(&std::process::id());
        pids.iter().any(|&p| zygote_parent(p).is_some())
    });
    assert!(back, "no worker was forked from a new zygote");
    assert!(
        exec_seen,
        "no replacement was exec'd while the zygote was down"
    );
}

/// Starts `zygote-host`, which builds a zygote pool of two workers busy in
/// hour-long tasks: its pid and the zygote's and workers' pids.
fn start_host() -> (std::process::Child, Vec<u32>) {
    let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_zygote-host"))
        .arg(FAULT_WORKER)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .trim()
        .strip_prefix("pids ")
        .unwrap_or_else(|| panic!("zygote-host said {line:?}"))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{line}");
    (host, pids)
}

#[test]
fn the_zygote_and_its_workers_die_with_a_sigkilled_pool() {
    let _w = watchdog(
        "the_zygote_and_its_workers_die_with_a_sigkilled_pool",
        LIMIT,
    );
    let (mut host, pids) = start_host();
    assert!(pids.iter().all(|&p| process_exists(p)));
    kill(host.id(), libc::SIGKILL);
    let _ = host.wait();
    assert!(
        wait_until(LIMIT, || pids.iter().all(|&p| not_running(p))),
        "still running after the pool was SIGKILLed: {:?}",
        pids.iter()
            .filter(|&&p| !not_running(p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn workers_die_with_a_sigkilled_pool_whose_zygote_died_first() {
    let _w = watchdog(
        "workers_die_with_a_sigkilled_pool_whose_zygote_died_first",
        LIMIT,
    );
    let (mut host, pids) = start_host();
    let (zygote, workers) = (pids[0], &pids[1..]);
    kill(zygote, libc::SIGKILL);
    assert!(wait_until(LIMIT, || not_running(zygote)));
    // Orphaned, the workers still serve their hour-long tasks...
    std::thread::sleep(Duration::from_millis(100));
    assert!(workers.iter().all(|&p| !not_running(p)));
    // ...until the pool is gone.
    kill(host.id(), libc::SIGKILL);
    let _ = host.wait();
    assert!(wait_until(LIMIT, || workers
        .iter()
        .all(|&p| not_running(p))));
}

#[test]
fn a_parent_whose_threads_hold_locks_keeps_starting_zygote_workers() {
    let _w = watchdog(
        "a_parent_whose_threads_hold_locks_keeps_starting_zygote_workers",
        LIMIT * 3,
    );
    capture_logs();
    // Eight threads take a mutex, the stdout lock and the logger's lock
    // again and again: a bare fork of this process would copy one of them
    // held, and its child would block on it forever.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shared = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let holders: Vec<_> = (0..8)
        .map(|i| {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                use std::sync::atomic::Ordering;
                while !stop.load(Ordering::Relaxed) {
                    match i % 3 {
                        0 => {
                            let mut n = shared.lock().unwrap();
                            *n += 1;
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        1 => {
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(b"");
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        _ => log::debug!("a record from a busy thread"),
                    }
                }
            })
        })
        .collect();
    let mut starts = 0;
    while starts < 200 {
        let pool = builder(8)
            .initializer(init_store, "x".to_owned())
            .build()
            .unwrap();
        // Tasks that print to stdout and log in the forked workers.
        assert_eq!(pool.with_chunksize(1).map(noisy, 0..8u64).unwrap().len(), 8);
        assert_eq!(pool.apply(parent_pid, ()).unwrap(), zygote_of(&pool));
        starts += pool.stats().workers_forked;
        pool.join();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in holders {
        h.join().unwrap();
    }
    assert!(*shared.lock().unwrap() > 0);
}

#[test]
fn output_buffered_in_the_zygote_is_written_once() {
    let _w = watchdog("output_buffered_in_the_zygote_is_written_once", LIMIT);
    let stderr = temp_path("zygote-stderr");
    let marker = "<<buffered in the zygote>>";
    let pool = builder(4)
        .worker_args(["--stderr".into(), stderr.clone().into_os_string()])
        .initializer(init_print_partial, marker.to_owned())
        .build()
        .unwrap();
    assert_eq!(pool.stats().workers_forked, 4);
    let _ = pool.with_chunksize(1).map(square, 0..16u64).unwrap();
    // A recycled generation too: the replacements exit as well.
    kill(pool.worker_pids()[0], libc::SIGKILL);
    assert!(wait_until(LIMIT, || pool.worker_pids().len() == 4));
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    pool.join();
    let printed = std::fs::read_to_string(&stderr).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr);
    assert_eq!(printed.matches(marker).count(), 1, "{printed:?}");
}

#[test]
fn no_descriptor_of_the_parent_reaches_the_zygote_or_a_worker() {
    let _w = watchdog(
        "no_descriptor_of_the_parent_reaches_the_zygote_or_a_worker",
        LIMIT,
    );
    // A file opened without close-on-exec, on purpose.
    let path = temp_path("parent-only");
    std::fs::write(&path, b"the parent's").unwrap();
    let c_path = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: open reads a NUL-terminated path and returns a descriptor or -1.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    let pool = builder(2).build().unwrap();
    let zygote = zygote_of(&pool);
    let name = path.display().to_string();
    for pid in pool.worker_pids().into_iter().chain([zygote]) {
        // The zygote holds a pidfd of each worker it forks from the fork
        // until the reply that carries it is sent; on a busy machine the
        // pool can read that reply, and the workers shake hands, before
        // the zygote (preempted after `sendmsg`) has closed it. Its table
        // at rest is the one checked: wait for the fork's descriptor to go.
        if pid == zygote {
            let at_rest = || procpool_tests::fd_table(pid).len() <= 6;
            assert!(
                wait_until(LIMIT, at_rest),
                "{pid}: {:?}",
                procpool_tests::fd_table(pid)
            );
        }
        let table = procpool_tests::fd_table(pid);
        assert!(!table.iter().any(|l| l.contains(&name)), "{pid}: {table:?}");
        // 0-2, the protocol at 3 and 4 (the zygote: its socket) and a
        // pidfd for the pool's process at 5; a worker also holds the pool's
        // lifeline at 6: nothing else.
        assert!(table[5].contains("pidfd"), "{pid}: {table:?}");
        if pid == zygote {
            assert_eq!(table.len(), 6, "{pid}: {table:?}");
            assert!(table[3].contains("socket:"), "{pid}: {table:?}");
        } else {
            assert_eq!(table.len(), 7, "{pid}: {table:?}");
            assert!(table[6].contains("pipe:"), "{pid}: {table:?}");
        }
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_zygote_that_dies_at_start_fails_the_build_with_its_reason() {
    let _w = watchdog(
        "a_zygote_that_dies_at_start_fails_the_build_with_its_reason",
        LIMIT,
    );
    let counter = temp_path("zygote-starts");
    let err = builder(2)
        .worker_args([
            "--crash-at".into(),
            "start".into(),
            "--death".into(),
            "segv".into(),
            "--counter".into(),
            counter.clone().into_os_string(),
        ])
        .build()
        .unwrap_err();
    let _ = std::fs::remove_file(&counter);
    let text = err.to_string();
    assert!(err.is_startup(), "{err}");
    assert!(text.contains("zygote") && text.contains("SIGSEGV"), "{err}");
}

#[test]
fn a_failing_initializer_in_the_zygote_fails_the_build_as_with_exec() {
    let _w = watchdog(
        "a_failing_initializer_in_the_zygote_fails_the_build_as_with_exec",
        LIMIT,
    );
    for method in [StartMethod::Exec, StartMethod::Zygote] {
        let err = Pool::builder()
            .workers(2)
            .worker_program(FAULT_WORKER)
            .start_method(method)
            .initializer(procpool_tests::init_fail, "no config".to_owned())
            .build()
            .unwrap_err();
        assert!(err.is_startup(), "{method:?}: {err}");
        assert!(err.to_string().contains("no config"), "{method:?}: {err}");
    }
}

#[test]
fn an_in_process_pool_has_no_zygote() {
    let err = Pool::builder()
        .in_process(procpool_tests::registry())
        .start_method(StartMethod::Zygote)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("in-process"), "{err}");
}

#[test]
fn a_zygote_copy_that_builds_a_pool_is_explained_once() {
    let _w = watchdog("a_zygote_copy_that_builds_a_pool_is_explained_once", LIMIT);
    // The parent calls serve_if_worker, its copies (the zygote) do not.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forgot-serve-if-worker"))
        .env("FORGOT_IN_WORKERS_ONLY", "1")
        .env("ZYGOTE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("started as a worker, built a pool instead of serving"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Asked the other way, the zygote serves and its pool works.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forgot-serve-if-worker"))
        .env("ASKS_IS_WORKER", "1")
        .env("ZYGOTE", "1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[0, 1, 4, 9]\n");
    assert_eq!(out.status.code(), Some(0));
}

/// Kills workers of `pool` one at a time until a replacement is forked
/// from a zygote other than `not`: that zygote's pid.
fn next_zygote(pool: &Pool, not: u32) -> u32 {
    let mut found = None;
    let back = wait_until(LIMIT, || {
        kill_and_replace(pool);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        found = pool
            .worker_pids()
            .iter()
            .filter_map(|&p| zygote_parent(p))
            .find(|&z| z != not);
        found.is_some()
    });
    assert!(back, "no worker was forked from a new zygote");
    found.unwrap()
}

#[test]
fn a_zygote_past_its_restart_limit_is_given_up_for_exec() {
    let _w = watchdog(
        "a_zygote_past_its_restart_limit_is_given_up_for_exec",
        LIMIT * 3,
    );
    capture_logs();
    let pool = builder(2)
        .restart_limit(1, Duration::from_secs(600))
        .build()
        .unwrap();
    // First death: within the limit, a new zygote comes.
    let first = zygote_of(&pool);
    kill(first, libc::SIGKILL);
    assert!(wait_until(LIMIT, || not_running(first)));
    let second = next_zygote(&pool, first);
    // Second death: past the limit, exec from now on.
    kill(second, libc::SIGKILL);
    assert!(wait_until(LIMIT, || not_running(second)));
    let forked = pool.stats().workers_forked;
    for _ in 0..4 {
        kill_and_replace(&pool);
        // Longer than any backoff: a restart would have happened by now.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert_eq!(
        pool.stats().workers_forked,
        forked,
        "forked after the limit"
    );
    for pid in pool.worker_pids() {
        assert_eq!(ppid_of(pid), std::process::id(), "worker {pid}");
    }
    let said = logged("starts its workers by exec from now on");
    assert!(
        said.iter()
            .any(|(l, m)| *l == log::Level::Error && m.contains(&second.to_string())),
        "{said:?}"
    );
}

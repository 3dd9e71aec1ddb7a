//! Regression tests for the faults found at the seams of the dispatcher
//! (the numbering: fault 1 to fault 12; faults 11 and the deeply
//! nested result have test binaries of their own, `sigchld_ignored` and
//! `deep_result`, as they change or may crash the whole process).
//!
//! Each test is named after its fault and cites it. Where a fault hangs,
//! the test waits a bounded time (`HANG`), then *rescues* the pool (kills
//! the process the pool is stuck on, by pid, or calls `terminate()`),
//! which lets the hung call return, and fails with a message saying what
//! hung: one hang does not take the rest of the binary down. The watchdog
//! stays armed behind every test in case the rescue cannot help.
//!
//! Processes these tests make leak on purpose (grandchildren in their own
//! session, forked children) are SIGKILLed by pid at the end of the test,
//! whether it passes or fails. Nothing here signals a process group: one
//! task moves its worker into this process's own group.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procpool::{Builder, Pool};
use procpool_tests::{
    announce_and_sleep, bytes_of_len, exit_after_result, fork_pipe_holder, ignore_sigterm_and_hang,
    kill, leave_group_and_hang, not_running, process_exists, process_state, record, recorded,
    setsid_grandchild, sleep_ms, square, temp_path, wait_until, watchdog,
};

use crate::{FAULT_WORKER, LIMIT, pool, recording_pool};

/// How long something that must not hang may take before the test calls
/// it a hang: far above what it takes on a busy machine, far below the
/// watchdog.
const HANG: Duration = Duration::from_secs(20);

fn builder(workers: usize) -> Builder {
    Pool::builder()
        .workers(workers)
        .worker_program(FAULT_WORKER)
}

/// `(parent pid, command name)` of process `pid`, from `/proc/<pid>/stat`.
fn parent_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// SIGKILLs `pid` if it is still a child of this process that was not
/// reaped (so the pid cannot belong to anyone else): the rescue of a test
/// whose pool is stuck on a worker.
fn kill_our_child(pid: u32) {
    if parent_and_comm(pid).is_some_and(|(ppid, _)| ppid == std::process::id()) {
        // SAFETY: kill only sends a signal, to our own unreaped child.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Cleans up a process the test made leak on purpose (a grandchild, a
/// forked child): SIGKILLs it when dropped, even when the test fails,
/// provided `pid` still runs the command `comm` (so a recycled pid is
/// left alone).
struct Reaper {
    pid: Option<u32>,
    comm: &'static str,
}

impl Reaper {
    fn new(comm: &'static str) -> Self {
        Self { pid: None, comm }
    }

    /// SIGKILLs the process now (if it still runs `comm`).
    fn kill_now(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        if parent_and_comm(pid).is_some_and(|(_, comm)| comm == self.comm) {
            // SAFETY: kill only sends a signal, to a process that still
            // runs the command this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Runs `f` on its own thread and waits at most `ceiling` for it. If it
/// does not return in time, `rescue` runs (it must make `f` return, e.g.
/// by killing the process `f` waits for), `f` is waited for again, and the
/// result comes back as `Err`.
fn bounded<T: Send + 'static>(
    ceiling: Duration,
    f: impl FnOnce() -> T + Send + 'static,
    rescue: impl FnOnce(),
) -> Result<T, T> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let waited = rx.recv_timeout(ceiling);
    let rescued = matches!(waited, Err(mpsc::RecvTimeoutError::Timeout));
    if rescued {
        rescue();
    }
    let value = match waited {
        Ok(v) => Some(v),
        Err(_) => rx.recv().ok(),
    };
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
    let value = value.expect("the call returned a value");
    if rescued { Err(value) } else { Ok(value) }
}

/// Whether process `pid` ignores SIGTERM (from `/proc/<pid>/status`).
fn ignores_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Ends a call that hangs: armed before the call, `rescue` runs if the
/// call is not over (`disarm`) within `ceiling`.
struct Rescue {
    disarm: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Rescue {
    fn arm(ceiling: Duration, rescue: impl FnOnce() + Send + 'static) -> Self {
        let (disarm, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || match rx.recv_timeout(ceiling) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                rescue();
                true
            }
            _ => false,
        });
        Self { disarm, thread }
    }

    /// The call is over: whether the rescue had to end it.
    fn disarm(self) -> bool {
        let _ = self.disarm.send(());
        self.thread.join().expect("the rescue did not panic")
    }
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()`
    // bytes into the set we pass, for this thread (pid 0).
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity failed");
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set, with `cpu` below its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Lets this thread (and threads it starts from now on) run only on
/// `cpus`.
fn run_this_thread_on(cpus: &[usize]) {
    // SAFETY: as in allowed_cpus.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes into the set, with `cpu` below its size
        // (it came from allowed_cpus).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: sched_setaffinity reads the set we pass, for this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity({cpus:?}) failed");
}

/// Gives this thread back all the CPUs it had, when dropped.
struct RestoreCpus(Vec<usize>);

impl Drop for RestoreCpus {
    fn drop(&mut self) {
        run_this_thread_on(&self.0);
    }
}

/// Fault 1: `let _ = pool.apply_async(f, x)?; pool.join();` hung in 9
/// runs of 10 with one worker (the dispatcher took the Submit and the Join
/// together, dropped the batch as cancelled after its `joining` check, and
/// slept in `poll` with nothing left to wake it). `join` must return, and
/// the task must have run, exactly once.
///
/// The pool (dispatcher and worker) is started on one CPU and this thread
/// moved to another, as on a many-core machine: otherwise the woken
/// dispatcher often preempts this thread between the submit and the drop
/// (on the same CPU), which hides the fault.
#[test]
fn fault01_join_after_dropping_an_async_handle() -> Result<(), procpool::Error> {
    let cpus = allowed_cpus();
    let _restore = RestoreCpus(cpus.clone());
    for round in 0..10u64 {
        let _w = watchdog(
            &format!("seams::fault01_join_after_dropping_an_async_handle (round {round})"),
            LIMIT,
        );
        let file = temp_path("fault01");
        if cpus.len() >= 2 {
            run_this_thread_on(&cpus[..1]);
        }
        let pool = Arc::new(recording_pool(1, &file));
        if cpus.len() >= 2 {
            run_this_thread_on(&cpus[1..2]);
        }
        let rescue = Rescue::arm(HANG, {
            let pool = pool.clone();
            move || pool.terminate()
        });
        drop(pool.apply_async(record, round)?);
        pool.join();
        let hung = rescue.disarm();
        run_this_thread_on(&cpus);
        let ran = recorded(&file);
        let _ = std::fs::remove_file(&file);
        assert!(
            !hung,
            "round {round}: join() after dropping the handle hung; terminate() ended it after {HANG:?} \
             (the task ran {ran:?})"
        );
        assert_eq!(
            ran,
            BTreeMap::from([(round, 1)]),
            "round {round}: the task submitted before join() must run exactly once"
        );
    }
    Ok(())
}

/// Fault 2: `join()` while another thread's blocking `apply` runs on the
/// direct lane ended that apply in `Err(Closed)` (the dispatcher's
/// shutdown read the lent worker's pipe itself and threw the result away;
/// the caller waited out the shutdown grace, then lost its worker). The
/// apply must end `Ok` with its value.
#[test]
fn fault02_join_during_a_direct_lane_apply() {
    let _w = watchdog("seams::fault02_join_during_a_direct_lane_apply", LIMIT);
    // Several rounds: the apply takes the direct lane only if the worker
    // was already lent out when it was called.
    for round in 0..8 {
        let pool = pool(1);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        let marker = temp_path("fault02");
        let arg = (marker.display().to_string(), 300);
        std::thread::scope(|s| {
            let caller = s.spawn(|| pool.apply(announce_and_sleep, arg));
            // join() only once the task is running in the worker.
            assert!(
                wait_until(LIMIT, || marker.exists()),
                "round {round}: the task never started"
            );
            pool.join();
            let outcome = caller.join().unwrap();
            assert_eq!(
                outcome.as_ref().ok(),
                Some(&300),
                "round {round}: the apply running when join() was called must end with its value, got {outcome:?}"
            );
        });
        let _ = std::fs::remove_file(&marker);
    }
}

/// Fault 3: a task that moves its worker into another process group
/// (`setpgid(0, getpgid(getppid()))`: the test process's own) and ignores
/// SIGTERM was out of reach of the pool's `killpg`: at its deadline the
/// worker survived, and the pool later blocked reaping it. The call must
/// time out, the worker must really die (and be reaped), and the pool
/// must go on and drop.
///
/// The worker joins *this* process's group: nothing here signals a group.
#[test]
fn fault03_a_worker_that_left_its_group_dies_at_its_deadline() {
    let _w = watchdog(
        "seams::fault03_a_worker_that_left_its_group_dies_at_its_deadline",
        LIMIT,
    );
    let pool = builder(1)
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let victim = pool.worker_pids()[0];
    let marker = temp_path("fault03-deadline");
    let err = pool
        .with_timeout(Duration::from_secs(2))
        .apply(leave_group_and_hang, marker.display().to_string())
        .unwrap_err();
    assert!(
        marker.exists(),
        "the task had not left its group by its deadline"
    );
    let _ = std::fs::remove_file(&marker);
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim));
    // Dead, and reaped by the pool (not left a zombie).
    let gone = wait_until(HANG, || !process_exists(victim));
    if !gone {
        let state = process_state(victim);
        kill_our_child(victim);
        panic!(
            "worker {victim} outside its process group survived its deadline by {HANG:?} \
             (state {state:?}); the test killed it"
        );
    }
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    let dropped = bounded(HANG, move || drop(pool), || kill_our_child(victim));
    assert!(dropped.is_ok(), "dropping the pool hung");
}

/// Fault 3, at `terminate()`: the same worker, hung without a deadline,
/// must be killed and reaped by `terminate()`, which must return (it
/// signalled only the group the worker left, then blocked reaping it).
#[test]
fn fault03_terminate_kills_a_worker_that_left_its_group() {
    let _w = watchdog(
        "seams::fault03_terminate_kills_a_worker_that_left_its_group",
        LIMIT,
    );
    let pool = Arc::new(
        builder(1)
            .kill_grace(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    let victim = pool.worker_pids()[0];
    let marker = temp_path("fault03-terminate");
    let handle = pool
        .apply_async(leave_group_and_hang, marker.display().to_string())
        .unwrap();
    assert!(
        wait_until(LIMIT, || marker.exists()),
        "the task never left its group"
    );
    let _ = std::fs::remove_file(&marker);
    let p = pool.clone();
    let terminated = bounded(HANG, move || p.terminate(), || kill_our_child(victim));
    assert!(
        terminated.is_ok(),
        "terminate() did not return within {HANG:?} with a worker outside its process group \
         (the test killed worker {victim} to end it)"
    );
    let err = handle.get().unwrap_err();
    assert!(err.is_terminated(), "{err}");
    assert!(
        !process_exists(victim),
        "worker {victim} still exists after terminate() (state {:?})",
        process_state(victim)
    );
    let dropped = bounded(HANG, move || drop(pool), || kill_our_child(victim));
    assert!(dropped.is_ok(), "dropping the pool hung");
}

/// Reads the grandchild's pid from `pidfile` into `reaper` (for clean-up)
/// and checks that it really left the worker's session.
fn grandchild_from(pidfile: &std::path::Path, reaper: &mut Reaper) -> u32 {
    let pid: u32 = std::fs::read_to_string(pidfile)
        .expect("the task wrote its grandchild's pid before its deadline")
        .trim()
        .parse()
        .unwrap();
    reaper.pid = Some(pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let session = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(3))
        .and_then(|s| s.parse::<u32>().ok());
    assert_eq!(
        session,
        Some(pid),
        "grandchild {pid} did not start a session of its own"
    );
    pid
}

/// Fault 4, at a deadline: a grandchild that left the worker's process
/// group (`setsid`) outlived the worker killed at the task's deadline. It
/// must die with its worker.
#[test]
fn fault04_a_setsid_grandchild_dies_at_the_deadline() {
    let _w = watchdog(
        "seams::fault04_a_setsid_grandchild_dies_at_the_deadline",
        LIMIT,
    );
    let mut reaper = Reaper::new("sleep");
    let pidfile = temp_path("fault04-deadline");
    let pool = builder(1)
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let victim = pool.worker_pids()[0];
    let err = pool
        .with_timeout(Duration::from_secs(2))
        .apply(setsid_grandchild, (pidfile.display().to_string(), true))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let grandchild = grandchild_from(&pidfile, &mut reaper);
    let _ = std::fs::remove_file(&pidfile);
    assert!(
        wait_until(HANG, || not_running(victim)),
        "worker {victim} survived its deadline"
    );
    assert!(
        wait_until(HANG, || not_running(grandchild)),
        "grandchild {grandchild} (own session) outlived its worker {victim}, killed at the deadline, by {HANG:?}"
    );
}

/// Fault 4, at `join()`: the same grandchild, started by a task that
/// returned normally, outlived the pool's orderly shutdown. It must die
/// with its worker.
#[test]
fn fault04_a_setsid_grandchild_dies_at_join() {
    let _w = watchdog("seams::fault04_a_setsid_grandchild_dies_at_join", LIMIT);
    let mut reaper = Reaper::new("sleep");
    let pidfile = temp_path("fault04-join");
    let pool = pool(1);
    let victim = pool.worker_pids()[0];
    let returned = pool
        .apply(setsid_grandchild, (pidfile.display().to_string(), false))
        .unwrap();
    let grandchild = grandchild_from(&pidfile, &mut reaper);
    let _ = std::fs::remove_file(&pidfile);
    assert_eq!(returned, grandchild);
    pool.join();
    assert!(
        !process_exists(victim),
        "worker {victim} still exists after join()"
    );
    assert!(
        wait_until(HANG, || not_running(grandchild)),
        "grandchild {grandchild} (own session) outlived its worker {victim} after join() by {HANG:?}"
    );
}

/// Fault 5: a blocking `apply` that took (on the direct lane) a worker
/// that had already died failed with "WorkerDied … while running" (the
/// failed write was not counted, so the unread frame looked received). A
/// task written to a dead worker never ran: it must run elsewhere.
///
/// Each round SIGKILLs the only worker from outside, waits until it has
/// really exited (so it cannot have read anything), and applies at once,
/// before the pool has noticed.
#[test]
fn fault05_an_apply_to_a_worker_that_died_before_the_write() {
    let _w = watchdog(
        "seams::fault05_an_apply_to_a_worker_that_died_before_the_write",
        Duration::from_secs(240),
    );
    let pool = pool(1);
    let mut killed = BTreeSet::new();
    let mut failures = Vec::new();
    const ROUNDS: u64 = 200;
    for round in 0..ROUNDS {
        // A live worker that was not killed yet.
        assert!(
            wait_until(HANG, || {
                let pids = pool.worker_pids();
                pids.len() == 1 && !killed.contains(&pids[0])
            }),
            "round {round}: no replacement worker: {:?}",
            pool.worker_pids()
        );
        let victim = pool.worker_pids()[0];
        kill(victim, libc::SIGKILL);
        killed.insert(victim);
        let until = Instant::now() + HANG;
        while !not_running(victim) {
            assert!(Instant::now() < until, "worker {victim} did not die");
            std::thread::yield_now();
        }
        match pool.apply(square, round) {
            Ok(v) => assert_eq!(v, round * round),
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} applies to a worker already dead failed: {failures:#?}",
        failures.len()
    );
}

/// Fault 6: a worker that died while lent to the direct lane, just after
/// its exchange succeeded, stayed listed (and lent) forever: its death was
/// seen while a caller held it, and nobody reported it. After the apply,
/// the dead pid must leave `worker_pids()`, replaced by a live worker.
///
/// Most rounds have the worker exit the moment its result is in the pipe
/// (the death lands while the caller holds the worker in about one round
/// in five); some exit 20 or 50 ms later, when the worker is parked idle.
#[test]
fn fault06_a_worker_dying_after_a_direct_lane_exchange() {
    let _w = watchdog(
        "seams::fault06_a_worker_dying_after_a_direct_lane_exchange",
        Duration::from_secs(240),
    );
    const WORKERS: usize = 2;
    let pool = pool(WORKERS);
    let mut ok = 0;
    let delays = [0u64, 0, 0, 20, 0, 0, 0, 50];
    for (round, delay) in delays.iter().cycle().take(64).enumerate() {
        let dead = match pool.apply(exit_after_result, *delay) {
            Ok(pid) => {
                ok += 1;
                pid
            }
            // It died before its result left: a legitimate outcome, and
            // the pool must recover from it just the same.
            Err(e) if e.is_worker_died() => e.worker_pid().unwrap(),
            Err(e) => panic!("round {round} (delay {delay} ms): {e}"),
        };
        let healed = wait_until(Duration::from_secs(10), || {
            let pids = pool.worker_pids();
            pids.len() == WORKERS && !pids.contains(&dead) && pids.iter().all(|&p| !not_running(p))
        });
        assert!(
            healed,
            "round {round} (delay {delay} ms): worker {dead} exited after its result, \
             yet 10 s later the pool lists {:?} (want {WORKERS} live workers without it)",
            pool.worker_pids()
        );
    }
    assert!(ok > 0, "no exchange succeeded before its worker died");
}

/// Fault 7: a second `terminate()` while the first waits out a long
/// `kill_grace` must escalate to SIGKILL at once. It was lost when it
/// arrived before the first terminate started waiting (the wait loop
/// slept without looking at the commands already queued).
#[test]
fn fault07_a_second_terminate_escalates_at_once() {
    let _w = watchdog("seams::fault07_a_second_terminate_escalates_at_once", LIMIT);
    for round in 0..5 {
        let pool = Arc::new(
            builder(1)
                .kill_grace(Duration::from_secs(60))
                .build()
                .unwrap(),
        );
        let victim = pool.worker_pids()[0];
        let stubborn = pool.apply_async(ignore_sigterm_and_hang, ()).unwrap();
        assert!(
            wait_until(LIMIT, || ignores_sigterm(victim)),
            "the task never ignored SIGTERM"
        );
        let p = pool.clone();
        let both = bounded(
            HANG,
            move || {
                std::thread::scope(|s| {
                    let first = s.spawn(|| p.terminate());
                    p.terminate();
                    first.join().unwrap();
                });
            },
            || kill_our_child(victim),
        );
        assert!(
            both.is_ok(),
            "round {round}: two terminate() calls did not return within {HANG:?} with a kill_grace \
             of 60 s: the second did not escalate (the test killed worker {victim})"
        );
        assert!(stubborn.get().unwrap_err().is_terminated());
        assert!(!process_exists(victim), "worker {victim} was not reaped");
    }
}

/// The common run of fault 8: a map (small and large results, so frames
/// arrive in pieces), applies, a timed-out task, and a join.
fn runs_with(name: &str, pool: Pool, call_timeout: Option<Duration>) {
    fn call(pool: &Pool, timeout: Option<Duration>) -> procpool::Call<'_> {
        match timeout {
            Some(t) => pool.with_timeout(t),
            None => pool.with_chunksize(4),
        }
    }
    assert_eq!(
        call(&pool, call_timeout).map(square, 0..100u64).unwrap(),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>(),
        "{name}: map"
    );
    let big = call(&pool, call_timeout)
        .map(bytes_of_len, vec![1u64 << 20; 4])
        .unwrap();
    assert!(big.iter().all(|b| b.len() == 1 << 20), "{name}: large map");
    assert_eq!(
        call(&pool, call_timeout).apply(square, 7).unwrap(),
        49,
        "{name}: apply"
    );
    let err = pool
        .with_timeout(Duration::from_millis(300))
        .apply(sleep_ms, 60_000)
        .unwrap_err();
    assert!(err.is_timeout(), "{name}: {err}");
    assert_eq!(pool.apply(square, 8).unwrap(), 64, "{name}: apply");
    let pids = pool.worker_pids();
    pool.join();
    assert!(
        pool.worker_pids().is_empty(),
        "{name}: join() did not stop the workers"
    );
    for pid in pids {
        assert!(!process_exists(pid), "{name}: worker {pid} left behind");
    }
}

/// Fault 8: `Duration::MAX` as a deadline or grace period overflowed
/// `Instant + Duration` in the dispatcher ("overflow when adding duration
/// to instant"), which panicked. Each setting at `Duration::MAX` must
/// work: build, map, apply, join.
#[test]
fn fault08_duration_max_task_timeout() {
    let _w = watchdog("seams::fault08_duration_max_task_timeout", LIMIT);
    let pool = builder(2).task_timeout(Duration::MAX).build().unwrap();
    runs_with("task_timeout(Duration::MAX)", pool, None);
}

/// Fault 8, per call: `with_timeout(Duration::MAX)`.
#[test]
fn fault08_duration_max_with_timeout() {
    let _w = watchdog("seams::fault08_duration_max_with_timeout", LIMIT);
    let pool = builder(2).build().unwrap();
    runs_with("with_timeout(Duration::MAX)", pool, Some(Duration::MAX));
}

/// Fault 8: `startup_timeout(Duration::MAX)`.
#[test]
fn fault08_duration_max_startup_timeout() {
    let _w = watchdog("seams::fault08_duration_max_startup_timeout", LIMIT);
    let pool = builder(2).startup_timeout(Duration::MAX).build();
    let pool = pool.expect("a pool with startup_timeout(Duration::MAX) builds");
    runs_with("startup_timeout(Duration::MAX)", pool, None);
}

/// Fault 8: `kill_grace(Duration::MAX)` (used when the timed-out task's
/// worker gets SIGTERM).
#[test]
fn fault08_duration_max_kill_grace() {
    let _w = watchdog("seams::fault08_duration_max_kill_grace", LIMIT);
    let pool = builder(2).kill_grace(Duration::MAX).build().unwrap();
    runs_with("kill_grace(Duration::MAX)", pool, None);
}

/// Fault 8: `stall_timeout(Duration::MAX)` (looked at while a large
/// result frame is half read).
#[test]
fn fault08_duration_max_stall_timeout() {
    let _w = watchdog("seams::fault08_duration_max_stall_timeout", LIMIT);
    let pool = builder(2).stall_timeout(Duration::MAX).build().unwrap();
    runs_with("stall_timeout(Duration::MAX)", pool, None);
}

/// Fault 8: `shutdown_grace(Duration::MAX)` (used by `join`).
#[test]
fn fault08_duration_max_shutdown_grace() {
    let _w = watchdog("seams::fault08_duration_max_shutdown_grace", LIMIT);
    let pool = builder(2).shutdown_grace(Duration::MAX).build().unwrap();
    runs_with("shutdown_grace(Duration::MAX)", pool, None);
}

/// Fault 12a: `with_timeout(Duration::ZERO)` killed a worker per call
/// (every task was past its deadline at once). A zero deadline is to be
/// refused at submit: the call fails, and no worker dies or times out.
#[test]
fn fault12a_a_zero_deadline_kills_no_worker() {
    let _w = watchdog("seams::fault12a_a_zero_deadline_kills_no_worker", LIMIT);
    let pool = pool(1);
    let worker = pool.worker_pids()[0];
    let applied = pool.with_timeout(Duration::ZERO).apply(square, 2);
    assert!(
        applied.is_err(),
        "a zero deadline was accepted: {applied:?}"
    );
    let mapped = pool.with_timeout(Duration::ZERO).map(square, 0..3u64);
    assert!(mapped.is_err(), "a zero deadline was accepted: {mapped:?}");
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let stats = pool.stats();
    assert_eq!(
        (stats.timeouts, stats.worker_deaths),
        (0, 0),
        "a zero deadline cost workers: {stats:?}"
    );
    assert_eq!(pool.worker_pids(), [worker]);
    assert!(!not_running(worker), "worker {worker} was killed");
}

/// Fault 12b: a task that `fork()`s a child (which keeps the worker's
/// protocol pipe open) made `join()` wait out the whole `shutdown_grace`
/// for an end of stream that only the child's exit brings. `join()` must
/// not wait for the worker's descendants.
#[test]
fn fault12b_a_forked_child_does_not_stall_join() {
    let _w = watchdog("seams::fault12b_a_forked_child_does_not_stall_join", LIMIT);
    let mut reaper = Reaper::new("fault-worker");
    let pool = Arc::new(
        builder(1)
            .shutdown_grace(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let worker = pool.worker_pids()[0];
    let child = pool.apply(fork_pipe_holder, 30).unwrap();
    reaper.pid = Some(child);
    assert_ne!(child, worker);
    let p = pool.clone();
    let joined = bounded(HANG, move || p.join(), || reaper.kill_now());
    assert!(
        joined.is_ok(),
        "join() was still waiting after {HANG:?} for the end of worker {worker}'s output, \
         held open by its forked child {child} (the test killed the child)"
    );
    assert!(!process_exists(worker), "worker {worker} left behind");
}

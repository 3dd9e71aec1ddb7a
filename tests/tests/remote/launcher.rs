//! Remote workers through a stand-in launcher (`sh -c 'exec "$@"'`, which
//! runs the worker command on this host as `srun` or `ssh` would run it on
//! another): the relay, its reports, its kills and the per-host limits,
//! without an ssh server.

use std::time::Duration;

use procpool::{Launcher, Pool};
use procpool_tests::{
    Death, exit_with, init_store, pid, record, record_then_sleep, recorded, segfault, sleep_ms,
    square, temp_path, wait_until, watchdog,
};

use crate::common::{FAULT_WORKER, LIMIT};

/// A launcher that runs its command here, named `name` in errors (and
/// in its relays' environment, where [`relays`] finds them).
pub(crate) fn stand_in(name: &str) -> Launcher {
    Launcher::command([
        "env".to_owned(),
        format!("{HOST_VAR}={name}"),
        "sh".to_owned(),
        "-c".to_owned(),
        "exec \"$@\"".to_owned(),
        "stand-in".to_owned(),
    ])
    .name(name)
}

/// Names the stand-in host in its relays' environment.
pub(crate) const HOST_VAR: &str = "PROCPOOL_TEST_HOST";

/// A launcher that refuses to start anything while `flag` exists.
fn failing_when(flag: &std::path::Path, name: &str) -> Launcher {
    let script = format!(
        "if [ -e '{}' ]; then exit 1; fi; exec \"$@\"",
        flag.display()
    );
    Launcher::command([
        "env".to_owned(),
        format!("{HOST_VAR}={name}"),
        "sh".to_owned(),
        "-c".to_owned(),
        script,
        "stand-in".to_owned(),
    ])
    .name(name)
}

pub(crate) fn remote_pool(name: &str, n: usize) -> procpool::Builder {
    pool_through(stand_in(name), n)
}

/// A pool of `n` fault workers through `launcher`, and none here.
pub(crate) fn pool_through(launcher: Launcher, n: usize) -> procpool::Builder {
    Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(launcher.workers(n))
}

/// The relays of stand-in host `name`: children of this process started
/// with the relay variable and that host's name.
pub(crate) fn relays(name: &str) -> Vec<u32> {
    let host = format!("{HOST_VAR}={name}");
    procpool_tests::children_of_this_process()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|e| {
                let mut vars = e.split(|&b| b == 0);
                vars.clone().any(|v| v == b"PROCPOOL_RELAY=1") && vars.any(|v| v == host.as_bytes())
            })
        })
        .collect()
}

#[test]
fn every_entry_point_works_through_a_launcher() {
    let _w = watchdog("every_entry_point_works_through_a_launcher", LIMIT);
    let pool = remote_pool("node-a", 2).build().unwrap();
    assert_eq!(pool.workers(), 2);
    assert!(
        pool.worker_pids().is_empty(),
        "remote pids are not this host's"
    );
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    let v: Vec<u64> = pool.map(square, 0..10_000u64).unwrap();
    assert_eq!(v, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut u: Vec<u64> = pool
        .imap_unordered(square, 0..100u64)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    u.sort_unstable();
    assert_eq!(u, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    // The worker is the relay's child, not the launcher itself.
    let worker = pool.apply(pid, ()).unwrap();
    assert!(!relays("node-a").contains(&worker));
    pool.close();
    pool.join();
    assert!(relays("node-a").is_empty(), "relays outlived the pool");
}

#[test]
fn a_remote_segfault_reads_as_a_signal_on_its_host() {
    let _w = watchdog("a_remote_segfault_reads_as_a_signal_on_its_host", LIMIT);
    let pool = remote_pool("node-b", 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let err = pool.apply(segfault, ()).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(procpool::Exit::Signal(11)), "{err}");
    assert_eq!(err.host(), Some("node-b"), "{err}");
    assert_eq!(err.worker_pid(), Some(worker), "{err}");
    assert!(err.to_string().contains("on node-b"), "{err}");
    // Replaced, and the replacement serves.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_ne!(pool.apply(pid, ()).unwrap(), worker);
    let err = pool.apply(exit_with, 7).unwrap_err();
    assert_eq!(err.exit(), Some(procpool::Exit::Code(7)), "{err}");
}

#[test]
fn a_deadline_kills_the_remote_worker_and_settles_exactly() {
    let _w = watchdog(
        "a_deadline_kills_the_remote_worker_and_settles_exactly",
        LIMIT,
    );
    let file = temp_path("remote-deadline");
    let pool = remote_pool("node-c", 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let hung = pool
        .with_timeout(Duration::from_millis(300))
        .apply_async(sleep_ms, 60_000)
        .unwrap();
    // Queued behind the hung task on the same (only) worker: they never
    // started, so they run on the replacement, once each.
    let after: Vec<_> = (0..5u64)
        .map(|i| pool.apply_async(record, i).unwrap())
        .collect();
    let err = hung.get().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.host(), Some("node-c"), "{err}");
    assert!(err.to_string().contains(" on node-c"), "{err}");
    for (i, h) in after.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), i as u64);
    }
    let counts = recorded(&file);
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert!(
        wait_until(LIMIT, || procpool_tests::not_running(worker)),
        "the hung worker still runs"
    );
    let _ = std::fs::remove_file(file);
}

/// Runs a task that exits with code 5 on `pool`'s one worker, with `n`
/// records queued behind it, which never started there: checks that
/// they ran once each, elsewhere (`file` is the initializer's store),
/// and returns the crash's error.
fn crash_with_records_queued(pool: &Pool, file: &std::path::Path, n: u64) -> procpool::Error {
    let crash = pool
        .apply_async(procpool_tests::crash_running, Death::Exit(5))
        .unwrap();
    let after: Vec<_> = (0..n)
        .map(|i| pool.apply_async(record, i).unwrap())
        .collect();
    let err = crash.get().unwrap_err();
    for (i, h) in after.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), i as u64);
    }
    let counts = recorded(file);
    assert_eq!(counts.len() as u64, n, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    err
}

#[test]
fn items_queued_behind_a_remote_crash_run_once_elsewhere() {
    let _w = watchdog(
        "items_queued_behind_a_remote_crash_run_once_elsewhere",
        LIMIT,
    );
    let file = temp_path("remote-crash");
    let pool = remote_pool("node-d", 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let err = crash_with_records_queued(&pool, &file, 20);
    assert_eq!(err.exit(), Some(procpool::Exit::Code(5)), "{err}");
    let _ = std::fs::remove_file(file);
}

/// A launcher whose process ends before the bytes it carried have all
/// arrived, as a multiplexed `ssh` client can (it exits when the master
/// passes on the exit status, while the master may still be writing the
/// session's last output): here everything the relay writes reaches the
/// pool `seconds` late, through a filter that outlives the launcher.
pub(crate) fn lagging(name: &str, seconds: f64) -> Launcher {
    Launcher::command([
        "env".to_owned(),
        format!("{HOST_VAR}={name}"),
        "bash".to_owned(),
        "-c".to_owned(),
        // The filter is the shell's child, not the command's (whose
        // relay would kill it as its own descendant), and the command is
        // not exec'd: the launcher ends when the relay does.
        format!(
            "exec > >(exec perl -e 'while (sysread(STDIN, $b, 1 << 16)) \
             {{ select(undef, undef, undef, {seconds}); syswrite(STDOUT, $b) }}'); \
             \"$@\"; exit $?"
        ),
        "lagging".to_owned(),
    ])
    .name(name)
}

#[test]
fn a_relay_report_arriving_after_its_launcher_ended_still_settles_the_death() {
    let _w = watchdog(
        "a_relay_report_arriving_after_its_launcher_ended_still_settles_the_death",
        LIMIT,
    );
    let file = temp_path("remote-late-report");
    let pool = pool_through(lagging("node-late", 0.2), 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    // The relay's report of the exit, not a lost connection: its launcher
    // ended with the relay, but the stream had not.
    let err = crash_with_records_queued(&pool, &file, 5);
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(procpool::Exit::Code(5)), "{err}");
    assert_eq!(err.host(), Some("node-late"), "{err}");
    // The same through a blocking call, which the caller's thread makes
    // on a lent worker and hands back when it sees the launcher end.
    let err = pool
        .apply(procpool_tests::crash_running, Death::Exit(6))
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(procpool::Exit::Code(6)), "{err}");
    assert_eq!(pool.apply(record, 5).unwrap(), 5);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_lost_launcher_fails_what_ran_there_and_nothing_runs_twice() {
    let _w = watchdog(
        "a_lost_launcher_fails_what_ran_there_and_nothing_runs_twice",
        LIMIT,
    );
    let file = temp_path("remote-lost");
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .remote(stand_in("node-e").workers(1))
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let results: Vec<_> = (0..40u64)
        .map(|i| pool.apply_async(procpool_tests::record_slowly, i).unwrap())
        .collect();
    // Once both workers are busy, the connection to node-e goes: its
    // launcher (here the relay itself) is killed outright.
    assert!(wait_until(LIMIT, || recorded(&file).len() >= 2));
    for relay in relays("node-e") {
        procpool_tests::kill(relay, libc::SIGKILL);
    }
    let mut lost = 0;
    for (i, h) in results.into_iter().enumerate() {
        match h.get() {
            Ok(v) => assert_eq!(v, i as u64),
            Err(e) => {
                assert!(e.is_host_lost(), "{e}");
                assert_eq!(e.host(), Some("node-e"), "{e}");
                lost += 1;
            }
        }
    }
    assert!(lost >= 1, "the item running on node-e failed");
    let counts = recorded(&file);
    assert!(counts.values().all(|&n| n == 1), "ran twice: {counts:?}");
    assert_eq!(counts.len() + lost, 40, "{counts:?}, {lost} lost");
    let _ = std::fs::remove_file(file);
}

#[test]
fn another_build_at_the_path_is_refused_naming_the_host() {
    let _w = watchdog(
        "another_build_at_the_path_is_refused_naming_the_host",
        LIMIT,
    );
    // A copy of the worker with one byte more: it would run, but it is not
    // the build the pool has.
    let other = temp_path("other-build");
    let mut bytes = std::fs::read(FAULT_WORKER).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(stand_in("node-f").program(&other).workers(1))
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("node-f"), "{text}");
    assert!(text.contains("another build"), "{text}");
    let _ = std::fs::remove_file(other);
}

#[test]
fn a_host_past_its_restart_limit_is_dropped_and_the_rest_go_on() {
    let _w = watchdog(
        "a_host_past_its_restart_limit_is_dropped_and_the_rest_go_on",
        LIMIT,
    );
    let flag = temp_path("host-down");
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .remote(
            failing_when(&flag, "node-g")
                .workers(1)
                .restart_limit(2, Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    std::fs::write(&flag, b"down").unwrap();
    // Kill the remote worker: its replacements cannot start.
    let remote = relays("node-g");
    assert_eq!(remote.len(), 1);
    procpool_tests::kill(remote[0], libc::SIGKILL);
    // Two retries, then past the limit: the host is dropped, and the pool
    // goes on with its local worker.
    assert!(wait_until(LIMIT, || pool.stats().start_failures >= 3));
    let v: Vec<u64> = pool.map(square, 0..1000u64).unwrap();
    assert_eq!(v.len(), 1000);
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert!(relays("node-g").is_empty());
    let _ = std::fs::remove_file(flag);
}

#[test]
fn a_pool_with_no_worker_left_anywhere_is_broken_with_the_reasons() {
    let _w = watchdog(
        "a_pool_with_no_worker_left_anywhere_is_broken_with_the_reasons",
        LIMIT,
    );
    let flag = temp_path("all-down");
    let pool = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(
            failing_when(&flag, "node-h")
                .workers(1)
                .restart_limit(1, Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    std::fs::write(&flag, b"down").unwrap();
    let err = pool.apply(exit_with, 1).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    let err = pool.apply(square, 2).unwrap_err();
    assert!(err.is_broken(), "{err}");
    let text = err.to_string();
    assert!(text.contains("no worker is left anywhere"), "{text}");
    assert!(text.contains("node-h"), "{text}");
    let _ = std::fs::remove_file(flag);
}

/// Starts `remote-host` with `args`; returns it and its worker's pid once
/// a task hangs in that worker.
pub(crate) fn start_remote_host(args: &[String]) -> (std::process::Child, u32) {
    use std::io::BufRead;
    let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_remote-host"))
        .arg(FAULT_WORKER)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker = line
        .trim()
        .strip_prefix("pid ")
        .unwrap_or_else(|| panic!("remote-host said {line:?}"))
        .parse()
        .unwrap();
    (host, worker)
}

#[test]
fn a_pool_killed_outright_leaves_no_remote_worker() {
    let _w = watchdog("a_pool_killed_outright_leaves_no_remote_worker", LIMIT);
    let prefix = ["launcher", "sh", "-c", "exec \"$@\"", "stand-in"].map(String::from);
    let (mut host, worker) = start_remote_host(&prefix);
    assert!(procpool_tests::process_exists(worker));
    host.kill().unwrap();
    host.wait().unwrap();
    // Its launcher is told to end with it; the relay then ends the worker
    // (busy in an hour-long task).
    assert!(
        wait_until(LIMIT, || procpool_tests::not_running(worker)),
        "the remote worker outlived its pool"
    );
}

#[test]
fn cancelling_a_task_running_remotely_kills_it_there_and_the_rest_run_once() {
    let _w = watchdog("cancelling_a_task_running_remotely_kills_it_there", LIMIT);
    let file = temp_path("remote-cancel");
    let pool = remote_pool("node-i", 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let running = procpool_tests::running_task(&pool); // a minute, once started
    let behind: Vec<_> = (0..5u64)
        .map(|i| pool.apply_async(record, i).unwrap())
        .collect();
    running.cancel();
    let err = running.get().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    // Killed there, its tree with it; another job's items, queued behind,
    // run once on the replacement.
    assert!(
        wait_until(LIMIT, || procpool_tests::not_running(worker)),
        "the cancelled task's worker still runs"
    );
    for (i, h) in behind.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), i as u64);
    }
    let counts = recorded(&file);
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_cancelled_remote_job_runs_no_item_it_had_not_started() {
    let _w = watchdog(
        "a_cancelled_remote_job_runs_no_item_it_had_not_started",
        LIMIT,
    );
    let file = temp_path("remote-cancel-job");
    let pool = remote_pool("node-j", 2)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let job = pool
        .with_chunksize(1)
        .map_async(
            procpool_tests::record_then_sleep,
            (0..20u64).map(|i| (i, 60_000)),
        )
        .unwrap();
    assert!(
        wait_until(LIMIT, || recorded(&file).len() == 2),
        "two items start"
    );
    let started = recorded(&file);
    job.cancel();
    let err = job.get().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    pool.close();
    pool.join();
    assert_eq!(
        recorded(&file),
        started,
        "only the two that had started ran"
    );
    let _ = std::fs::remove_file(file);
}

/// A worker's phase when it dies.
#[derive(Debug, Clone, Copy)]
enum Phase {
    DecodingArgument,
    Running,
    EncodingResult,
    AfterSendingResult,
}

#[test]
fn every_death_at_every_phase_of_a_remote_worker_ends_each_task_once() {
    use procpool_tests::{DecodeBomb, crash_after_result, crash_decoding, crash_encoding};
    let _w = watchdog("every_death_at_every_phase_of_a_remote_worker", LIMIT * 3);
    for phase in [
        Phase::DecodingArgument,
        Phase::Running,
        Phase::EncodingResult,
        Phase::AfterSendingResult,
    ] {
        for death in Death::ALL {
            let case = format!("{phase:?} x {death:?}");
            let file = temp_path("remote-matrix");
            let pool = remote_pool("node-m", 1)
                .initializer(init_store, file.display().to_string())
                .build()
                .unwrap();
            let victim = pool.apply(pid, ()).unwrap();
            let before: Vec<_> = (0..3)
                .map(|i| pool.apply_async(record, i).unwrap())
                .collect();
            let outcome = match phase {
                Phase::DecodingArgument => pool.apply(crash_decoding, DecodeBomb(death)).map(|_| 0),
                Phase::Running => pool.apply(procpool_tests::crash_running, death),
                Phase::EncodingResult => pool.apply(crash_encoding, death).map(|_| 0),
                Phase::AfterSendingResult => pool.apply(crash_after_result, death),
            };
            for (h, i) in before.into_iter().zip(0..) {
                assert_eq!(h.get().unwrap(), i, "{case}");
            }
            match phase {
                Phase::AfterSendingResult => assert_eq!(outcome.unwrap(), 1, "{case}"),
                _ => {
                    let err = outcome.unwrap_err();
                    assert!(err.is_worker_died(), "{case}: {err}");
                    // The exact status, from the host: not a lost connection.
                    assert_eq!(err.exit(), Some(death.exit()), "{case}: {err}");
                    assert_eq!(err.worker_pid(), Some(victim), "{case}: {err}");
                    assert_eq!(err.host(), Some("node-m"), "{case}: {err}");
                }
            }
            let after: Vec<_> = (3..8)
                .map(|i| pool.apply_async(record, i).unwrap())
                .collect();
            for (h, i) in after.into_iter().zip(3..) {
                assert_eq!(h.get().unwrap(), i, "{case}");
            }
            assert!(
                wait_until(LIMIT, || procpool_tests::not_running(victim)),
                "{case}: worker {victim} still runs"
            );
            let counts = recorded(&file);
            assert_eq!(counts.len(), 8, "{case}: {counts:?}");
            assert!(
                counts.values().all(|&c| c == 1),
                "{case}: ran twice: {counts:?}"
            );
            assert!(
                wait_until(LIMIT, || pool.stats().worker_deaths == 1),
                "{case}: {:?}",
                pool.stats()
            );
            let _ = std::fs::remove_file(&file);
        }
    }
}

#[test]
fn a_remote_crash_inside_an_exact_chunk_re_dispatches_the_items_not_started() {
    use procpool_tests::{Chaos, chaos};
    let _w = watchdog("a_remote_crash_inside_an_exact_chunk", LIMIT);
    let file = temp_path("remote-eager");
    let pool = remote_pool("node-n", 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let items: Vec<(Chaos, u64)> = (0..10)
        .map(|i| (if i == 4 { Chaos::Crash } else { Chaos::Work }, i))
        .collect();
    // A deadline makes the job exact: outcomes come one by one, and the
    // relay's count says which items the dead worker started.
    let results: Vec<_> = pool
        .with_chunksize(10)
        .with_timeout(Duration::from_secs(60))
        .imap(chaos, items)
        .unwrap()
        .collect();
    for (i, r) in results.iter().enumerate() {
        match i {
            4 => assert!(r.as_ref().unwrap_err().is_worker_died(), "{r:?}"),
            _ => assert_eq!(*r.as_ref().unwrap(), i as u64),
        }
    }
    let counts = recorded(&file);
    assert_eq!(counts.len(), 9, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn items_a_lost_host_was_never_told_to_start_run_elsewhere_once() {
    let _w = watchdog("items_a_lost_host_was_never_told_to_start", LIMIT);
    let file = temp_path("remote-held");
    let pool = remote_pool("node-k", 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    // The first runs there for a minute; the next, pipelined behind it,
    // waits in the relay for the pool's go-ahead.
    let running = pool
        .apply_async(record_then_sleep, (0u64, 60_000u64))
        .unwrap();
    let behind: Vec<_> = (1..4u64)
        .map(|i| pool.apply_async(record, i).unwrap())
        .collect();
    assert!(wait_until(LIMIT, || recorded(&file).len() == 1));
    // The host is lost (its relay killed outright: no word from it).
    for relay in relays("node-k") {
        procpool_tests::kill(relay, libc::SIGKILL);
    }
    let err = running.get().unwrap_err();
    assert!(err.is_host_lost(), "{err}");
    // Never started there: they run on the replacement, once each.
    for (h, i) in behind.into_iter().zip(1..) {
        assert_eq!(h.get().unwrap(), i);
    }
    let counts = recorded(&file);
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let _ = std::fs::remove_file(file);
}

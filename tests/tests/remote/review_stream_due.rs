//! Review of ead9476 (a launcher that ends before its stream does): the
//! worker waits for the rest of its stream (`Worker::stream_due`), taking
//! no work meanwhile. Every test runs through a stand-in launcher.

use std::time::{Duration, Instant};

use procpool::{Launcher, Pool};
use procpool_tests::{
    Death, crash_after_result, init_store, pid_after_ms, record, recorded, temp_path, wait_until,
    watchdog,
};

use crate::common::LIMIT;
use crate::launcher::{HOST_VAR, lagging, pool_through, relays};

/// A launcher that, once, while `flag` exists, ends at once (exit 1)
/// without starting anything, while a child it leaves behind holds its
/// output open for `seconds` (as a multiplexed ssh client's master may
/// hold the session's output after the client ended); nothing the pool
/// writes can be read (the shell is gone; a background job's input is
/// /dev/null). Otherwise it runs its command (the relay) as `exec "$@"`.
fn fails_once_holding_output(flag: &std::path::Path, name: &str, seconds: f64) -> Launcher {
    let script = format!(
        "if [ -e '{f}' ]; then rm -f '{f}'; sleep {seconds} & exit 1; fi; exec \"$@\"",
        f = flag.display()
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

/// A remote pool of one worker through [`fails_once_holding_output`],
/// whose worker has crashed and whose replacement's launcher has ended
/// (its output held `seconds`).
fn with_a_failed_start(flag: &std::path::Path, name: &str, seconds: f64) -> Pool {
    let pool = pool_through(fails_once_holding_output(flag, name, seconds), 1)
        .build()
        .unwrap();
    assert_eq!(relays(name).len(), 1);
    // The next start fails: its launcher ends before its output does.
    std::fs::write(flag, b"").unwrap();
    let err = pool
        .apply(procpool_tests::crash_running, Death::Exit(5))
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert!(wait_until(LIMIT, || !flag.exists()));
    pool
}

/// A replacement whose launcher ends during its start-up, before its
/// stream does, must not be replaced twice: once at once (it no longer
/// counts as serving while it is `stream_due`, so `keep_capacity` starts
/// another) and once more by the retry its start failure schedules when
/// its stream ends (`Respawn::due` starts that one whatever the count).
/// The site asked for one worker; it must not end up with two.
#[test]
fn a_start_failure_seen_before_its_stream_ended_is_replaced_once() {
    let _w = watchdog(
        "a_start_failure_seen_before_its_stream_ended_is_replaced_once",
        LIMIT,
    );
    let flag = temp_path("stream-due-startup-flag");
    let _ = std::fs::remove_file(&flag);
    let name = "node-sd-startup";
    let pool = with_a_failed_start(&flag, name, 1.5);
    // The failed start's output ends 1.5 s on; it is settled, and its
    // retry follows.
    assert!(wait_until(LIMIT, || pool.stats().start_failures >= 1
        && pool.stats().workers_started >= 3));
    // Time for a second replacement to show, if the pool started one
    // (none may): this wait can make a correct pool neither pass nor fail.
    std::thread::sleep(Duration::from_secs(2));
    let started = pool.stats().workers_started;
    let there = relays(name);
    // Two tasks at once: one worker runs them one after the other.
    let a = pool.apply_async(pid_after_ms, 300).unwrap();
    let b = pool.apply_async(pid_after_ms, 300).unwrap();
    let (a, b) = (a.get().unwrap(), b.get().unwrap());
    assert_eq!(
        there.len(),
        1,
        "a site of one worker runs {there:?} ({started} workers started: the first, the \
         failed start, and one replacement expected)"
    );
    assert_eq!(a, b, "two workers served a site of one");
    let _ = std::fs::remove_file(flag);
}

/// A result written before the worker died, that reaches the pool after
/// its launcher ended, is delivered (not failed as a lost host): through
/// a blocking call (the lane hands the batch back, with its id) and
/// through the dispatcher.
#[test]
fn a_result_arriving_after_its_launcher_ended_is_delivered() {
    let _w = watchdog(
        "a_result_arriving_after_its_launcher_ended_is_delivered",
        LIMIT,
    );
    let pool = pool_through(lagging("node-sd-late-done", 0.6), 1)
        .build()
        .unwrap();
    // Returns 1, dies 200 ms later: the launcher ends about 400 ms before
    // the result reaches the pool.
    for _ in 0..2 {
        assert_eq!(pool.apply(crash_after_result, Death::Exit(3)).unwrap(), 1);
    }
    let h = pool
        .apply_async(crash_after_result, Death::Exit(3))
        .unwrap();
    assert_eq!(h.get().unwrap(), 1);
    assert!(wait_until(LIMIT, || pool.stats().worker_deaths >= 3));
}

/// A filter that lags 10 s per chunk while `flag` exists, and passes
/// output on at once otherwise.
fn lagging_when(flag: &std::path::Path, name: &str) -> Launcher {
    let script = format!(
        "exec > >(exec perl -e 'while (sysread(STDIN, $b, 1 << 16)) \
         {{ select(undef, undef, undef, 10) if -e $ARGV[0]; syswrite(STDOUT, $b) }}' '{}'); \
         \"$@\"; exit $?",
        flag.display()
    );
    Launcher::command([
        "env".to_owned(),
        format!("{HOST_VAR}={name}"),
        "bash".to_owned(),
        "-c".to_owned(),
        script,
        "lagging".to_owned(),
    ])
    .name(name)
}

/// A report that does not come within RELAY_SLACK (5 s): the worker is
/// settled as a lost host then, not left waiting, and what was queued
/// behind it runs once on the replacement.
#[test]
fn a_report_later_than_the_slack_settles_as_a_lost_host_in_time() {
    let _w = watchdog(
        "a_report_later_than_the_slack_settles_as_a_lost_host_in_time",
        LIMIT,
    );
    let flag = temp_path("stream-due-lag-flag");
    let file = temp_path("stream-due-lag-file");
    let _ = std::fs::remove_file(&flag);
    let pool = pool_through(lagging_when(&flag, "node-sd-slack"), 1)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    std::fs::write(&flag, b"").unwrap();
    let t0 = Instant::now();
    let crash = pool
        .apply_async(procpool_tests::crash_running, Death::Exit(5))
        .unwrap();
    let after: Vec<_> = (0..3u64)
        .map(|i| pool.apply_async(record, i).unwrap())
        .collect();
    // The replacement's output must not lag.
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::remove_file(&flag);
    let err = crash.get().unwrap_err();
    let took = t0.elapsed();
    assert!(err.is_host_lost() || err.is_worker_died(), "{err}");
    assert!(took < Duration::from_secs(9), "settled after {took:?}");
    for (i, h) in after.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), i as u64);
    }
    let counts = recorded(&file);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let _ = std::fs::remove_file(file);
}

/// `terminate` while a worker waits for the rest of its stream is not
/// held up by that wait (the worker is being killed: it is settled at
/// once).
#[test]
fn terminate_during_a_stream_wait_is_prompt() {
    let _w = watchdog("terminate_during_a_stream_wait_is_prompt", LIMIT);
    let flag = temp_path("stream-due-term-flag");
    let _ = std::fs::remove_file(&flag);
    let pool = pool_through(lagging_when(&flag, "node-sd-term"), 1)
        .build()
        .unwrap();
    std::fs::write(&flag, b"").unwrap();
    let crash = pool
        .apply_async(procpool_tests::crash_running, Death::Exit(5))
        .unwrap();
    // The launcher ends at once; its output (the report) lags 10 s.
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::fs::remove_file(&flag);
    let t0 = Instant::now();
    pool.terminate();
    let took = t0.elapsed();
    let err = crash.get().unwrap_err();
    assert!(err.is_terminated(), "{err}");
    assert!(took < Duration::from_secs(3), "terminate took {took:?}");
}

/// Review of abcbf31 ("the wait ... stops ... at terminate"): `terminate`
/// is checked only after the loop's wait returns, and `terminate()`
/// itself wakes that wait only through the `Kill` frame it queues (a
/// writable input pipe). A worker waiting for its stream whose input
/// cannot take that frame (here a replacement whose launcher ended at
/// once; likewise one whose input a deadline's `Kill` frame already
/// closed) leaves nothing to wake the loop: `terminate` (and `Drop`)
/// blocks until the wait's slack (RELAY_SLACK, 5 s) is over.
#[test]
fn terminate_is_prompt_while_a_failed_start_waits_for_its_stream() {
    let _w = watchdog(
        "terminate_is_prompt_while_a_failed_start_waits_for_its_stream",
        LIMIT,
    );
    let flag = temp_path("stream-due-term-noinput-flag");
    let _ = std::fs::remove_file(&flag);
    // The replacement's launcher ends at once; its output stays open 8 s.
    let pool = with_a_failed_start(&flag, "node-sd-term2", 8.0);
    // Its end seen by the dispatcher: the stream wait has begun.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    pool.terminate();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "terminate took {took:?}");
}

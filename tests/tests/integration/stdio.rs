use procpool_tests::{noisy, temp_path, watchdog};

use crate::{FAULT_WORKER, LIMIT, pool};

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w == &needle)
        .count()
}

#[test]
fn printing_tasks_leave_results_intact() {
    let _w = watchdog("printing_tasks_leave_results_intact", LIMIT);
    // The workers' stderr goes to a file: the noise is checked there
    // instead of being spilled on the terminal.
    let stderr = temp_path("noisy-stderr");
    let pool = procpool::Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .worker_args(["--stderr".into(), stderr.clone().into_os_string()])
        .build()
        .unwrap();
    // The noise includes bytes shaped like a frame header, written raw to
    // fd 1: they must land on stderr, not in the protocol stream.
    let got = pool.with_chunksize(3).map(noisy, 0..40u64).unwrap();
    assert_eq!(got, (0..40u64).collect::<Vec<_>>());
    assert_eq!(pool.stats().worker_deaths, 0);
    // The workers exit at the end of their input, flushing their stdout.
    pool.join();
    let printed = std::fs::read(&stderr).unwrap();
    let _ = std::fs::remove_file(&stderr);
    // Each pattern is written by one write call, so it stays whole even
    // when the two workers' lines interleave.
    for pattern in [
        &b"\xff\xff\xff\x7fraw bytes on fd 1\n"[..],
        b"\x05\x00\x00\x00hello",
        b"noise on stdout for ",
        b"noise on stderr for ",
    ] {
        assert_eq!(
            occurrences(&printed, pattern),
            40,
            "{:?} in the workers' stderr: {:?}",
            pattern.escape_ascii().to_string(),
            printed.escape_ascii().to_string()
        );
    }
}

#[test]
fn a_worker_sees_stdin_as_dev_null_and_stdout_as_stderr() {
    let _w = watchdog(
        "a_worker_sees_stdin_as_dev_null_and_stdout_as_stderr",
        LIMIT,
    );
    let pool = pool(1);
    let fds = pool.apply(procpool_tests::open_fds, ()).unwrap();
    assert_eq!(fds[0], "0 -> /dev/null", "{fds:?}");
    let target = |n: usize| fds[n].split_once(" -> ").unwrap().1.to_owned();
    assert_eq!(
        target(1),
        target(2),
        "stdout points where stderr does: {fds:?}"
    );
}

use procpool_tests::{noisy, watchdog};

use crate::{LIMIT, pool};

#[test]
fn printing_tasks_leave_results_intact() {
    let _w = watchdog("printing_tasks_leave_results_intact", LIMIT);
    let pool = pool(2);
    // The noise includes bytes shaped like a frame header, written raw to
    // fd 1: they must land on stderr, not in the protocol stream.
    let got = pool.with_chunksize(3).map(noisy, 0..40u64).unwrap();
    assert_eq!(got, (0..40u64).collect::<Vec<_>>());
    assert_eq!(pool.stats().worker_deaths, 0);
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

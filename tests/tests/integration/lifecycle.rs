use std::collections::BTreeSet;
use std::time::Duration;

use procpool_tests::{fd_table, process_exists, process_state, sleep_ms, square, watchdog};

use crate::{LIMIT, pool};

fn assert_gone(pids: &[u32]) {
    for &pid in pids {
        assert!(
            !process_exists(pid),
            "worker {pid} still exists (state {:?})",
            process_state(pid)
        );
    }
}

#[test]
fn dropping_the_pool_leaves_no_process_and_no_zombie() {
    let _w = watchdog("dropping_the_pool_leaves_no_process_and_no_zombie", LIMIT);
    let pool = pool(3);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    drop(pool);
    assert_gone(&pids);
}

#[test]
fn drop_terminates_unfinished_work() {
    let _w = watchdog("drop_terminates_unfinished_work", LIMIT);
    let pool = pool(1);
    let pids = pool.worker_pids();
    let pending: Vec<_> = (0..4)
        .map(|_| pool.apply_async(sleep_ms, 60_000).unwrap())
        .collect();
    drop(pool);
    for h in pending {
        let err = h.get().unwrap_err();
        assert!(err.is_terminated(), "{err}");
    }
    assert_gone(&pids);
}

#[test]
fn close_and_join_finish_the_queued_work() {
    let _w = watchdog("close_and_join_finish_the_queued_work", LIMIT);
    let pool = pool(2);
    let pids = pool.worker_pids();
    let handles: Vec<_> = (0..20u64)
        .map(|i| pool.apply_async(sleep_ms, i % 5).unwrap())
        .collect();
    pool.close();
    let refused = pool.apply(square, 1).unwrap_err();
    assert!(refused.is_closed(), "{refused}");
    pool.join();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), i as u64 % 5);
    }
    assert_gone(&pids);
    assert!(pool.worker_pids().is_empty());
    // Terminate after join does nothing, and neither does drop.
    pool.terminate();
}

#[test]
fn terminate_fails_every_unfinished_task_once() {
    let _w = watchdog("terminate_fails_every_unfinished_task_once", LIMIT);
    let pool = pool(2);
    let pids = pool.worker_pids();
    let running: Vec<_> = (0..6)
        .map(|_| pool.apply_async(sleep_ms, 60_000).unwrap())
        .collect();
    let mut stream = pool
        .with_chunksize(1)
        .imap(sleep_ms, vec![60_000u64; 5])
        .unwrap();
    pool.terminate();
    for h in running {
        assert!(h.get().unwrap_err().is_terminated());
    }
    let rest: Vec<_> = stream.by_ref().collect();
    assert_eq!(rest.len(), 5);
    assert!(rest.iter().all(|r| r.as_ref().unwrap_err().is_terminated()));
    assert_gone(&pids);
    // A terminated pool refuses work with a clear error, and a second
    // terminate is harmless.
    assert!(pool.apply(square, 2).unwrap_err().is_terminated());
    pool.terminate();
    assert_eq!(pool.stats().tasks_failed, 11);
}

#[test]
fn dropping_an_async_handle_detaches_the_task() {
    let _w = watchdog("dropping_an_async_handle_detaches_the_task", LIMIT);
    let file = procpool_tests::temp_path("cancel-async");
    let pool = crate::recording_pool(1, &file);
    let blocker = pool.apply_async(procpool_tests::record_slowly, 0).unwrap();
    let dropped: Vec<_> = (1..11)
        .map(|i| pool.apply_async(procpool_tests::record_slowly, i).unwrap())
        .collect();
    drop(dropped);
    assert_eq!(blocker.get().unwrap(), 0);
    // Detached, not cancelled: every task runs, once, before join ends.
    pool.close();
    pool.join();
    let ran = procpool_tests::recorded(&file);
    assert_eq!(ran.len(), 11, "ran {ran:?}");
    assert!(ran.values().all(|&n| n == 1), "ran {ran:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn no_descriptor_of_the_parent_leaks_into_a_worker() {
    let _w = watchdog("no_descriptor_of_the_parent_leaks_into_a_worker", LIMIT);
    // A descriptor created without close-on-exec, on purpose.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pool = pool(2);
    for pid in pool.worker_pids() {
        let table = fd_table(pid);
        let numbers: BTreeSet<u32> = table
            .iter()
            .map(|l| l.split_once(" -> ").unwrap().0.parse().unwrap())
            .collect();
        // A worker forked from a zygote also holds a pidfd for the pool's
        // process, at 5, and the pool's lifeline (a pipe), at 6, to end
        // when the pool does.
        let forked = crate::START == procpool::StartMethod::Zygote;
        let expected = if forked { 0..=6 } else { 0..=4 };
        assert_eq!(
            numbers,
            expected.collect::<BTreeSet<u32>>(),
            "worker {pid}: {table:?}"
        );
        assert!(
            table[3].contains("pipe:") && table[4].contains("pipe:"),
            "{table:?}"
        );
        if forked {
            assert!(
                table[5].contains("pidfd") && table[6].contains("pipe:"),
                "{table:?}"
            );
        }
    }
    // SAFETY: closing the descriptors we opened above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[test]
fn terminate_sends_sigterm_then_sigkill() {
    let _w = watchdog("terminate_sends_sigterm_then_sigkill", LIMIT);
    let pool = crate::builder(2)
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let pids = pool.worker_pids();
    // One worker dies of SIGTERM at once; the other ignores it and is
    // killed when the grace period ends.
    let stubborn = pool
        .apply_async(procpool_tests::ignore_sigterm_and_hang, ())
        .unwrap();
    let plain = pool.apply_async(sleep_ms, 60_000).unwrap();
    pool.terminate();
    assert!(stubborn.get().unwrap_err().is_terminated());
    assert!(plain.get().unwrap_err().is_terminated());
    assert_gone(&pids);
}

#[test]
fn a_second_terminate_escalates_at_once() {
    // The grace period is far longer than the watchdog: only escalation
    // lets this test finish.
    let _w = watchdog("a_second_terminate_escalates_at_once", LIMIT);
    let pool = crate::builder(1).kill_grace(LIMIT * 10).build().unwrap();
    let pids = pool.worker_pids();
    let stubborn = pool
        .apply_async(procpool_tests::ignore_sigterm_and_hang, ())
        .unwrap();
    // Let the task start and ignore SIGTERM before terminating.
    assert!(procpool_tests::wait_until(LIMIT, || {
        std::fs::read_to_string(format!("/proc/{}/status", pids[0])).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("SigIgn:") && !l.ends_with("0000000000000000"))
        })
    }));
    std::thread::scope(|s| {
        let first = s.spawn(|| pool.terminate());
        // The first terminate has failed the task and is in its grace period.
        assert!(stubborn.get().unwrap_err().is_terminated());
        pool.terminate();
        first.join().unwrap();
    });
    assert_gone(&pids);
}

#[test]
fn dropping_an_imap_iterator_cancels_work_not_started() {
    let _w = watchdog("dropping_an_imap_iterator_cancels_work_not_started", LIMIT);
    let file = procpool_tests::temp_path("cancel");
    let pool = crate::recording_pool(1, &file);
    let mut it = pool
        .with_chunksize(1)
        .imap(procpool_tests::record_slowly, 0..6u64)
        .unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
    // Whatever was already in the worker's pipe finishes first.
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    let ran: Vec<u64> = procpool_tests::recorded(&file).into_keys().collect();
    // Up to two batches (the pipeline) may have been in the worker's pipe
    // when the iterator was dropped; 3..6 were never sent.
    assert!(ran.len() <= 3 && ran.iter().all(|&i| i < 3), "ran {ran:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn an_iterator_outliving_join_ends_every_item_once() {
    let _w = watchdog("an_iterator_outliving_join_ends_every_item_once", LIMIT);
    let pool = pool(1);
    let mut it = pool.with_chunksize(1).imap(square, 0..100u64).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    pool.join();
    let rest: Vec<_> = it.collect();
    assert_eq!(rest.len(), 99, "one outcome per item");
    // What was submitted before the join ran; the rest was refused.
    let done = rest.iter().take_while(|r| r.is_ok()).count();
    assert!(done > 0);
    for (i, r) in rest.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, ((i + 1) * (i + 1)) as u64),
            Err(e) => {
                assert!(i >= done);
                assert!(e.is_closed(), "{e}");
            }
        }
    }
}

#[test]
fn terminate_ends_applies_in_progress_on_the_direct_lane() {
    let _w = watchdog(
        "terminate_ends_applies_in_progress_on_the_direct_lane",
        LIMIT,
    );
    let pool = pool(2);
    let pids = pool.worker_pids();
    std::thread::scope(|s| {
        let callers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| pool.apply(sleep_ms, 60_000)))
            .collect();
        // Both workers busy with the sleeps (lent or dispatched).
        assert!(procpool_tests::wait_until(LIMIT, || {
            pids.iter().all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/wchan"))
                    .is_ok_and(|w| w.contains("nanosleep"))
            })
        }));
        pool.terminate();
        for c in callers {
            assert!(c.join().unwrap().unwrap_err().is_terminated());
        }
    });
    assert_gone(&pids);
}

//! Hostile review of the halt mark (`sys::shm` `claim`/`halt`,
//! `Server::run`, `Conn::halt`, `Dispatcher::cancel`/`stop_worker`,
//! `Dispatcher::lose`) and of per-worker state and the worker index: each
//! test here is one finding, named after what should hold, failing while
//! the finding stands. (Finding H3, two live workers under one index for a
//! kill's grace, is documented at `worker::index` rather than changed: a
//! replacement starts at once.)

use std::time::Duration;

use procpool_tests::{
    announce_and_sleep, children_then_wait_for, ignore_sigterm_announce_and_sleep, sleep_ms,
    square, temp_path, wait_until, watchdog,
};

use crate::LIMIT;

/// Finding H1: the halt mark is claimed against only at a batch's *first*
/// item. A deadline kill halts the worker, but an eager batch (a job with
/// a deadline and a chunk of several items) goes on inside the batch: a
/// task that outlives SIGTERM finishes within the kill grace, and the
/// worker starts the *next item of the same batch*, which SIGKILL then
/// kills. That item never ran past its own deadline, was started by a
/// worker the pool had already doomed, and fails `WorkerDied` instead of
/// running on the replacement: the very fault the halt mark fixed between
/// batches, left standing within one.
#[test]
fn a_deadline_kill_does_not_let_the_next_item_of_the_same_batch_start_in_the_grace() {
    let _w = watchdog("deadline_next_item_same_batch_in_grace", LIMIT);
    let pool = crate::builder(1)
        .kill_grace(Duration::from_secs(2))
        .build()
        .unwrap();
    let (m0, m1) = (temp_path("halt-batch-0"), temp_path("halt-batch-1"));
    // Deadline 2 s. Item 0 runs 3 s (times out at 2 s, ignores SIGTERM,
    // ends at 3 s, inside the grace that ends at 4 s); item 1, in the same
    // chunk, needs 1.5 s (well inside its own deadline): started at 3 s on
    // the doomed worker, it is SIGKILLed at 4 s. One-second margins.
    let item1 = pool
        .with_chunksize(2)
        .with_timeout(Duration::from_secs(2))
        .imap(
            ignore_sigterm_announce_and_sleep,
            [
                (m0.display().to_string(), 3000),
                (m1.display().to_string(), 1500),
            ],
        )
        .unwrap()
        .collect::<Vec<_>>();
    assert!(
        item1[0].as_ref().is_err_and(|e| e.is_timeout()),
        "{item1:?}"
    );
    assert!(
        matches!(item1[1], Ok(1500)),
        "an item of the batch, started by a worker already halted for its kill, ended {:?}",
        item1[1]
    );
}

/// Finding H2: a deadline kill on a worker without its counter (a launcher
/// stripped `PROCPOOL_PROGRESS`, which the pool accepts; see `no_counter`)
/// still pipelines another caller's batch behind the timed-out item; the
/// halt mark is never read by such a worker, and `lose` counts every item
/// it was sent as started, so that other caller's item, which never
/// started, fails `WorkerDied`. The pool chose the kill: it could have kept
/// such a worker to one batch in flight.
#[test]
fn a_deadline_kill_on_a_counterless_worker_spares_another_callers_pipelined_item() {
    let _w = watchdog("deadline_counterless_pipelined", LIMIT);
    let pool = crate::counterless(1).build().unwrap();
    let marker = temp_path("halt-counterless");
    let timed = pool
        .with_timeout(Duration::from_millis(500))
        .apply_async(announce_and_sleep, (marker.display().to_string(), 30_000))
        .unwrap();
    // Another caller, no deadline: sent behind it on the only worker.
    let mut other = pool.apply_async(square, 7).unwrap();
    assert!(timed.get().unwrap_err().is_timeout());
    let r = other.get_timeout(LIMIT);
    assert!(
        matches!(r, Ok(49)),
        "another caller's item, never started on the killed worker, ended {r:?}"
    );
}

/// Finding H4: `Dispatcher::cancel` decides from two reads of a worker's
/// counter: `Settle::cancel` reads it (the worker runs a cancelled item:
/// kill it), then, one worker after another, `Conn::halt` reads it again.
/// A cancelled item that ends between the two lets the worker start its
/// next batch, another job's; the second read says so and the worker is
/// only *retired* (`queue.rs` `cancel`, else branch) while it runs that
/// batch. But `Settle::retire` clears `serving`, and `Settle::deadline_of`
/// ignores workers not serving: that other job's deadline is gone, and a
/// hung item of it hangs its caller (and keeps the worker, whose index its
/// replacement already has). Killing the first worker walks its
/// descendant tree before the second worker's halt, which widens the
/// window: here each cancelled item has 100 children, and ends as soon as
/// the cancel is sent.
#[test]
fn a_cancel_that_retires_a_worker_keeps_the_deadline_of_the_batch_it_runs() {
    let _w = watchdog("cancel_retire_keeps_deadline", Duration::from_secs(300));
    for trial in 0..8 {
        let pool = crate::builder(2)
            .kill_grace(Duration::from_millis(200))
            .build()
            .unwrap();
        let go = temp_path("halt-retire-go");
        let markers = [temp_path("halt-retire-0"), temp_path("halt-retire-1")];
        let cancelled = pool
            .with_chunksize(1)
            .map_async(
                children_then_wait_for,
                markers
                    .iter()
                    .map(|m| (go.display().to_string(), m.display().to_string(), 100u32)),
            )
            .unwrap();
        // Another job, one item per worker, pipelined behind the cancelled
        // items; each has a 1 s deadline and would sleep 30 s.
        let mut others: Vec<_> = (0..2)
            .map(|_| {
                pool.with_timeout(Duration::from_secs(1))
                    .apply_async(sleep_ms, 30_000)
                    .unwrap()
            })
            .collect();
        assert!(
            wait_until(LIMIT, || markers.iter().all(|m| m.exists())),
            "the cancelled items start"
        );
        cancelled.cancel();
        std::fs::write(&go, b"go").unwrap();
        let _ = cancelled.get();
        for other in &mut others {
            let r = other.get_timeout(Duration::from_secs(15));
            assert!(
                r.as_ref().is_err_and(|e| e.is_timeout()),
                "trial {trial}: an item with a 1 s deadline, on a worker a cancel retired, \
                 ended {r:?} after 15 s"
            );
        }
        pool.terminate();
        let _ = std::fs::remove_file(&go);
        for m in &markers {
            let _ = std::fs::remove_file(m);
        }
    }
}

/// Finding H5: `Conn::halt` returns the counter of the *first* halt on
/// every later call. A worker that a cancel retired (finding H4) goes on
/// running the other job's batch; when that job is cancelled in turn,
/// `Settle::cancel` (fresh read) finds the worker running its item, but
/// `Dispatcher::cancel` asks `runs_cancelled` with the stale count of the
/// first halt, which points at an item settled long ago: the worker is
/// retired again, not killed, and the cancelled item runs on (a long
/// one) while its caller waits.
#[test]
fn a_second_cancel_kills_a_worker_a_first_cancel_retired() {
    let _w = watchdog(
        "second_cancel_kills_retired_worker",
        Duration::from_secs(400),
    );
    for trial in 0..8 {
        let pool = crate::builder(2)
            .kill_grace(Duration::from_millis(200))
            .build()
            .unwrap();
        let go = temp_path("halt-second-go");
        let markers = [temp_path("halt-second-0"), temp_path("halt-second-1")];
        let first = pool
            .with_chunksize(1)
            .map_async(
                children_then_wait_for,
                markers
                    .iter()
                    .map(|m| (go.display().to_string(), m.display().to_string(), 100u32)),
            )
            .unwrap();
        // The second job: one chunk per worker, pipelined behind the first
        // job's items; each chunk runs a short item (100 ms: past the
        // worker's 20 ms flush interval, so its result is delivered before
        // the next item starts), then one of ten minutes, which only a kill
        // ends before the test does.
        let long: Vec<_> = (0..2)
            .map(|i| temp_path(&format!("halt-second-long-{i}")))
            .collect();
        let short: Vec<_> = (0..2)
            .map(|i| temp_path(&format!("halt-second-short-{i}")))
            .collect();
        let items: Vec<(String, u64)> = (0..2)
            .flat_map(|i| {
                [
                    (short[i].display().to_string(), 100),
                    (long[i].display().to_string(), 600_000),
                ]
            })
            .collect();
        let second = pool
            .with_chunksize(2)
            .imap(announce_and_sleep, items)
            .unwrap();
        let handle = second.cancel_handle();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(second.collect::<Vec<_>>());
        });
        assert!(
            wait_until(LIMIT, || markers.iter().all(|m| m.exists())),
            "the first job's items start"
        );
        first.cancel();
        std::fs::write(&go, b"go").unwrap();
        let _ = first.get();
        // A chunk sent again after the first cancel's kill may be
        // pipelined behind the other worker's long item, where it never
        // starts (it is then cancelled unstarted): wait for one long item.
        assert!(
            wait_until(LIMIT, || long.iter().any(|m| m.exists())),
            "trial {trial}: a long item of the second job starts"
        );
        let cancelled_at = std::time::Instant::now();
        handle.cancel();
        let r = rx.recv_timeout(Duration::from_secs(40));
        let took = cancelled_at.elapsed();
        assert!(
            r.as_ref()
                .is_ok_and(|v| v.iter().all(|o| o.as_ref().is_ok_and(|&ms| ms == 100)
                    || o.as_ref().is_err_and(|e| e.is_cancelled())))
                && took < Duration::from_secs(10),
            "trial {trial}: the cancelled job's items ended {r:?}, {took:?} after the cancel"
        );
        pool.terminate();
        for p in markers.iter().chain(&long).chain(&short).chain([&go]) {
            let _ = std::fs::remove_file(p);
        }
    }
}

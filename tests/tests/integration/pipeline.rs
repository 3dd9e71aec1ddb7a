//! Deep pipelines (`dispatcher/pace.rs`): a worker whose batches come back
//! fast is sent up to `DEEP_PIPELINE` (16) batches ahead. What sits in its
//! pipe must still end exactly once when the worker dies, and a slow item
//! can hold back no more than that pipe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procpool::Exit;
use procpool_tests::{Chaos, chaos, init_store, recorded, sleep_ms, temp_path, watchdog};

use crate::{LIMIT, builder, pool};

/// The most batches one worker may hold.
const DEEP_PIPELINE: usize = 16;

#[test]
fn a_slow_item_holds_back_no_more_than_one_deep_pipeline() {
    let _w = watchdog(
        "a_slow_item_holds_back_no_more_than_one_deep_pipeline",
        LIMIT,
    );
    let pool = pool(2);
    // Fast items set a fast pace (deep pipelines), then one slow item,
    // then fast ones again. The other worker runs the rest long before the
    // slow one ends; only what was already in the slow one's pipe waits.
    const SLOW: u64 = 1_500;
    let items = (0..400).map(|_| 0).chain([SLOW]).chain((0..100).map(|_| 0));
    let behind = came_back_after(&pool, items, SLOW);
    assert!(
        behind < DEEP_PIPELINE,
        "{behind} items came back after the slow one: they waited in its worker's pipe"
    );
}

#[test]
fn a_crash_in_a_deep_pipeline_costs_only_its_own_item() {
    let _w = watchdog("a_crash_in_a_deep_pipeline_costs_only_its_own_item", LIMIT);
    let file = temp_path("deep-pipeline");
    let pool = builder(2)
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    const N: u64 = 3_000;
    let kind = |i: u64| {
        if i % 500 == 499 {
            Chaos::Crash
        } else {
            Chaos::Work
        }
    };
    let results: Vec<_> = pool
        .with_chunksize(1)
        .imap(chaos, (0..N).map(|i| (kind(i), i)))
        .unwrap()
        .collect();
    assert_eq!(results.len() as u64, N);
    let counts = recorded(&file);
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        match kind(i) {
            Chaos::Work => {
                assert_eq!(r.as_ref().ok(), Some(&i), "item {i}: {r:?}");
                assert_eq!(counts.get(&i), Some(&1), "item {i} ran other than once");
            }
            _ => {
                let e = r.as_ref().expect_err("a crashing item has no result");
                assert!(e.is_worker_died(), "item {i}: {e}");
                assert_eq!(e.exit(), Some(Exit::Code(3)), "item {i}: {e}");
            }
        }
    }
    assert_eq!(counts.len() as u64, N - N / 500, "nothing else ran");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_worker_killed_with_a_deep_pipeline_loses_only_its_running_item() {
    let _w = watchdog(
        "a_worker_killed_with_a_deep_pipeline_loses_only_its_running_item",
        LIMIT,
    );
    let pool = pool(2);
    // One worker sleeps in an item while fast items stream past it; it is
    // killed mid-item, with whatever it was sent after that still in its
    // pipe: those run elsewhere.
    let items = (0..300)
        .map(|_| 0)
        .chain([30_000])
        .chain((0..300).map(|_| 0));
    let mut stream = pool.with_chunksize(1).imap(sleep_ms, items).unwrap();
    let mut results = Vec::new();
    for r in stream.by_ref().take(300) {
        results.push(r);
    }
    // The long item is running (or about to): kill its worker.
    let victim = loop {
        let busy: Vec<u32> = pool
            .worker_pids()
            .into_iter()
            .filter(|&p| asleep_in_a_task(p))
            .collect();
        if let [pid] = busy[..] {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill only sends a signal to the worker's pid.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    results.extend(stream);
    assert_eq!(results.len(), 601);
    for (i, r) in results.iter().enumerate() {
        if i == 300 {
            let e = r.as_ref().expect_err("the killed item has no result");
            assert_eq!(e.exit(), Some(Exit::Signal(libc::SIGKILL)), "{e}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&0), "item {i}: {r:?}");
        }
    }
}

/// Whether worker `pid` is sleeping in `sleep_ms` (rather than waiting
/// for its next message), as the kernel's wait channel says.
fn asleep_in_a_task(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
}

/// Runs `items` (milliseconds to sleep, one `slow`) through
/// `imap_unordered` with chunk size 1: how many results came back after
/// the slow one's.
pub(crate) fn came_back_after(
    pool: &procpool::Pool,
    items: impl IntoIterator<Item = u64>,
    slow: u64,
) -> usize {
    let order: Vec<u64> = pool
        .with_chunksize(1)
        .imap_unordered(sleep_ms, items)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let slow_at = order.iter().position(|&ms| ms == slow).unwrap();
    order.len() - 1 - slow_at
}

/// How many items an `imap` of 200 ms items with chunk size 1 pulls from
/// its input before its first result (the window of a slow job of small
/// chunks).
pub(crate) fn pulled_before_first_result(pool: &procpool::Pool) -> u64 {
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let input = (0..1_000u64).map(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        200u64
    });
    let mut it = pool.with_chunksize(1).imap(sleep_ms, input).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 200);
    pulled.load(Ordering::SeqCst)
}

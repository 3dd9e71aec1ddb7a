use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use procpool_tests::{mul_add, square, watchdog};

use crate::{LIMIT, pool};

#[test]
fn map_returns_results_in_input_order() {
    let _w = watchdog("map_returns_results_in_input_order", LIMIT);
    let pool = pool(2);
    let got = pool.map(square, 0..10_000u64).unwrap();
    let want: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    assert_eq!(got, want);
}

#[test]
fn map_with_every_chunk_size_agrees() {
    let _w = watchdog("map_with_every_chunk_size_agrees", LIMIT);
    let pool = pool(3);
    let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    for chunk in [1, 2, 7, 100, 5000] {
        let got = pool.with_chunksize(chunk).map(square, 0..1000u64).unwrap();
        assert_eq!(got, want, "chunksize {chunk}");
    }
    // An iterator of unknown length takes the growing chunk size.
    let got = pool.map(square, (0..1000u64).filter(|_| true)).unwrap();
    assert_eq!(got, want);
}

#[test]
fn imap_streams_in_order() {
    let _w = watchdog("imap_streams_in_order", LIMIT);
    let pool = pool(2);
    let got: Vec<u64> = pool
        .imap(square, (0..5000u64).filter(|_| true))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..5000u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn imap_unordered_yields_every_result_once() {
    let _w = watchdog("imap_unordered_yields_every_result_once", LIMIT);
    let pool = pool(3);
    // Sleeps of varied length make completion order differ from input order.
    let input: Vec<u64> = (0..60).map(|i| (i * 7) % 13).collect();
    let got: Vec<u64> = pool
        .with_chunksize(1)
        .imap_unordered(procpool_tests::sleep_ms, input.clone())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut sorted_got = got.clone();
    sorted_got.sort_unstable();
    let mut sorted_in = input;
    sorted_in.sort_unstable();
    assert_eq!(sorted_got, sorted_in);
}

#[test]
fn starmap_passes_tuples_as_arguments() {
    let _w = watchdog("starmap_passes_tuples_as_arguments", LIMIT);
    let pool = pool(2);
    let got = pool
        .starmap(mul_add, (0..100u64).map(|i| (i, 2, 1)))
        .unwrap();
    assert_eq!(got, (0..100u64).map(|i| i * 2 + 1).collect::<Vec<_>>());
}

#[test]
fn apply_and_apply_async() {
    let _w = watchdog("apply_and_apply_async", LIMIT);
    let pool = pool(2);
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    assert_eq!(pool.apply(mul_add, (3, 4, 5)).unwrap(), 17);

    let handles: Vec<_> = (0..20u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }

    let mut slow = pool.apply_async(procpool_tests::sleep_ms, 300).unwrap();
    let early = slow.get_timeout(Duration::from_millis(1)).unwrap_err();
    assert!(early.is_wait_timeout(), "{early}");
    assert_eq!(slow.get_timeout(LIMIT).unwrap(), 300);
    assert!(slow.ready());
    // The result was taken; asking again is an error, not a hang.
    assert!(slow.get_timeout(Duration::ZERO).is_err());
}

#[test]
fn empty_input_gives_empty_output() {
    let _w = watchdog("empty_input_gives_empty_output", LIMIT);
    let pool = pool(1);
    assert!(pool.map(square, Vec::<u64>::new()).unwrap().is_empty());
    assert_eq!(pool.imap(square, 0..0u64).unwrap().count(), 0);
    assert_eq!(pool.imap_unordered(square, 0..0u64).unwrap().count(), 0);
    assert!(pool.starmap(mul_add, Vec::new()).unwrap().is_empty());
}

#[test]
fn imap_consumes_its_input_lazily() {
    let _w = watchdog("imap_consumes_its_input_lazily", LIMIT);
    let pool = pool(2);
    let pulled = Rc::new(Cell::new(0u64));
    let counter = pulled.clone();
    // An endless input: consuming it eagerly would never return.
    let input = (0u64..).inspect(move |_| counter.set(counter.get() + 1));
    let mut it = pool.imap(square, input).unwrap();
    for i in 0..10_000u64 {
        assert_eq!(it.next().unwrap().unwrap(), i * i);
    }
    drop(it);
    // A bounded window ahead of the consumer, never the whole input.
    assert!(
        pulled.get() < 10_000 + 200_000,
        "pulled {} items",
        pulled.get()
    );
    // The pool is still fine after the iterator was dropped mid-way.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[test]
fn a_pool_is_shared_between_threads() {
    let _w = watchdog("a_pool_is_shared_between_threads", LIMIT);
    let pool = pool(2);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                let got = pool.map(square, t * 1000..(t + 1) * 1000).unwrap();
                assert_eq!(
                    got,
                    (t * 1000..(t + 1) * 1000)
                        .map(|x| x * x)
                        .collect::<Vec<_>>()
                );
            });
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.tasks_succeeded, 4000);
    assert_eq!(stats.tasks_failed, 0);
}

#[test]
fn work_is_spread_over_every_worker() {
    let _w = watchdog("work_is_spread_over_every_worker", LIMIT);
    let pool = pool(3);
    let pids: BTreeSet<u32> = pool
        .with_chunksize(1)
        .map(procpool_tests::pid, vec![(); 300])
        .unwrap()
        .into_iter()
        .collect();
    let workers: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    assert_eq!(workers.len(), 3);
    assert_eq!(pids, workers);
}

#[test]
fn imap_reports_progress() {
    let _w = watchdog("imap_reports_progress", LIMIT);
    let pool = pool(2);
    let mut it = pool.imap(square, 0..1000u64).unwrap();
    assert_eq!(it.size_hint(), (1000, Some(1000)));
    for _ in 0..10 {
        it.next().unwrap().unwrap();
    }
    assert_eq!(it.size_hint(), (990, Some(990)));
    assert_eq!(it.completed(), 10);
    assert_eq!(it.by_ref().count(), 990);
    assert_eq!(it.size_hint(), (0, Some(0)));
    // Unknown length: no upper bound until the input ends.
    let mut it = pool
        .imap_unordered(square, (0u64..).take_while(|x| *x < 50))
        .unwrap();
    assert_eq!(it.size_hint().1, None);
    assert_eq!(it.by_ref().count(), 50);
    assert_eq!(it.completed(), 50);
}

#[test]
fn applies_from_many_threads_beside_a_map_all_end_once() {
    let _w = watchdog("applies_from_many_threads_beside_a_map_all_end_once", LIMIT);
    let pool = pool(2);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..300u64 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.apply(square, x).unwrap(), x * x);
                }
            });
        }
        let pool = &pool;
        s.spawn(move || {
            let got = pool.map(square, 0..20_000u64).unwrap();
            assert_eq!(got, (0..20_000u64).map(|x| x * x).collect::<Vec<_>>());
        });
    });
    let stats = pool.stats();
    assert_eq!(stats.tasks_succeeded, 4 * 300 + 20_000);
    assert_eq!((stats.tasks_failed, stats.worker_deaths), (0, 0));
}

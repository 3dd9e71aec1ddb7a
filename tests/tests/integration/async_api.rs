//! The async face of the pool: `AsyncResult` as a `Future`, `Imap` as a
//! `Stream`, `map_async`/`starmap_async`, and callbacks on the pool's
//! callback thread; under a real tokio runtime and `futures`' executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use procpool_tests::{
    mul_add, parse_int, record_slowly, recorded, sleep_ms, square, temp_path, watchdog,
};

use crate::{LIMIT, pool, recording_pool};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn an_async_result_is_a_future_that_does_not_block_its_runtime_thread() {
    let _w = watchdog("an_async_result_is_a_future", LIMIT);
    let pool = pool(2);
    let done = AtomicBool::new(false);
    let (result, polls) = current_thread().block_on(async {
        let slow = pool.apply_async(sleep_ms, 200).expect("submit");
        let waiting = async {
            let r = slow.await;
            done.store(true, Ordering::SeqCst);
            r
        };
        // On one runtime thread: this loop runs only while the await above
        // is pending without blocking the thread.
        let other = async {
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        };
        tokio::join!(waiting, other)
    });
    assert_eq!(result.unwrap(), 200);
    assert!(polls > 0, "the runtime's thread was blocked by the await");
}

#[test]
fn many_awaits_on_a_multi_thread_runtime_all_complete_correctly() {
    let _w = watchdog("many_awaits_on_a_multi_thread_runtime", LIMIT);
    let pool = Arc::new(pool(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let sums = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                pool.apply_async(square, i).expect("submit").await
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap().unwrap());
        }
        got
    });
    assert_eq!(sums, (0..200u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn an_imap_is_a_stream_in_order_and_unordered() {
    let _w = watchdog("an_imap_is_a_stream", LIMIT);
    let pool = pool(2);
    let rt = current_thread();
    let ordered: Vec<u64> = rt.block_on(async {
        let stream = pool
            .with_chunksize(3)
            .imap(square, 0..500u64)
            .unwrap()
            .into_stream();
        stream.map(Result::unwrap).collect().await
    });
    assert_eq!(ordered, (0..500u64).map(|i| i * i).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = futures::executor::block_on(async {
        let mut stream = pool
            .with_chunksize(1)
            .imap_unordered(square, 0..300u64)
            .unwrap()
            .into_stream();
        let mut all = Vec::new();
        while let Some(r) = stream.next().await {
            all.push(r.unwrap());
        }
        all
    });
    unordered.sort_unstable();
    assert_eq!(unordered, (0..300u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn futures_block_on_drives_a_future_and_a_stream() {
    let _w = watchdog("futures_block_on_drives", LIMIT);
    let pool = pool(1);
    let r = futures::executor::block_on(pool.apply_async(square, 12).unwrap());
    assert_eq!(r.unwrap(), 144);
    let items: Vec<_> = futures::executor::block_on(
        pool.imap(parse_int, ["7", "x"].map(String::from))
            .unwrap()
            .into_stream()
            .collect(),
    );
    assert_eq!(items[0].as_ref().unwrap(), &Ok(7));
    assert!(items[1].as_ref().unwrap().is_err());
}

#[test]
fn a_dropped_future_detaches_its_task_which_still_runs_once() {
    let _w = watchdog("a_dropped_future_detaches", LIMIT);
    let file = temp_path("dropped-future");
    let pool = recording_pool(1, &file);
    let timed_out = current_thread().block_on(async {
        let f = pool.apply_async(record_slowly, 5).unwrap();
        // The timeout drops the future, pending.
        tokio::time::timeout(Duration::from_millis(1), f)
            .await
            .is_err()
    });
    assert!(timed_out, "record_slowly takes 300 ms");
    pool.close();
    pool.join();
    assert_eq!(
        recorded(&file).get(&5),
        Some(&1),
        "the detached task ran once"
    );
}

#[test]
fn map_async_returns_all_results_in_input_order_every_way() {
    let _w = watchdog("map_async_returns_all_results", LIMIT);
    let pool = pool(2);
    let want: Vec<u64> = (0..2000u64).map(|i| i * i).collect();
    assert_eq!(
        pool.map_async(square, 0..2000u64).unwrap().get().unwrap(),
        want
    );
    let awaited = futures::executor::block_on(
        pool.with_chunksize(7)
            .map_async(square, 0..2000u64)
            .unwrap(),
    );
    assert_eq!(awaited.unwrap(), want);
    let star = pool
        .starmap_async(mul_add, (0..100u64).map(|i| (i, 2, 1)))
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(star, (0..100u64).map(|i| i * 2 + 1).collect::<Vec<_>>());
    let empty: Vec<u64> = pool
        .map_async(square, Vec::<u64>::new())
        .unwrap()
        .get()
        .unwrap();
    assert!(empty.is_empty());
    // The whole input is submitted at once, so the handle can wait later.
    let mut later = pool.map_async(square, 0..50u64).unwrap();
    assert!(procpool_tests::wait_until(LIMIT, || later.ready()));
    assert_eq!(later.get().unwrap().len(), 50);
}

#[test]
fn map_async_ends_with_the_first_error_and_the_rest_still_runs() {
    let _w = watchdog("map_async_ends_with_the_first_error", LIMIT);
    let pool = pool(2);
    let inputs = ["1", "2", "x", "4"].map(String::from);
    // parse_int's own errors are values; a panic is the pool's error.
    let ok = pool.map_async(parse_int, inputs).unwrap().get().unwrap();
    assert_eq!(ok.len(), 4);
    assert!(ok[2].is_err());
    let err = pool
        .map_async(procpool_tests::panic_with_number, [1u32, 2, 3])
        .unwrap()
        .get()
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    // The pool is fine afterwards.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[test]
fn callbacks_run_on_the_pool_thread_and_all_have_run_when_join_returns() {
    let _w = watchdog("callbacks_run_on_the_pool_thread", LIMIT);
    let pool = pool(2);
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..50u64 {
        let tx = tx.clone();
        pool.apply_async(square, i).unwrap().on_complete(move |r| {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send((i, r.unwrap(), name)).unwrap();
        });
    }
    let tx2 = tx.clone();
    pool.map_async(square, 0..10u64)
        .unwrap()
        .on_complete(move |r| tx2.send((99, r.unwrap().iter().sum(), None)).unwrap());
    let etx = tx.clone();
    pool.apply_async(procpool_tests::panic_with, "in the task".to_owned())
        .unwrap()
        .on_complete(move |r| {
            etx.send((100, u64::from(r.unwrap_err().is_panic()), None))
                .unwrap()
        });
    drop(tx);
    pool.close();
    pool.join();
    // Every callback ran before join returned: nothing is still to come.
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len(), 52, "{got:?}");
    for (i, v, name) in &got {
        match i {
            99 => assert_eq!(*v, (0..10u64).map(|x| x * x).sum::<u64>()),
            100 => assert_eq!(*v, 1, "the error reached the callback"),
            _ => {
                assert_eq!(*v, i * i);
                assert_eq!(name.as_deref(), Some("procpool-callbacks"));
            }
        }
    }
}

#[test]
fn a_slow_callback_delays_only_callbacks_and_a_panicking_one_harms_nothing() {
    let _w = watchdog("a_slow_callback_delays_only_callbacks", LIMIT);
    let pool = pool(2);
    let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
    let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
    pool.apply_async(square, 1).unwrap().on_complete(move |_| {
        started_tx.send(()).unwrap();
        // Holds the callback thread until the test opens the gate.
        gate_rx.recv().unwrap();
    });
    started_rx.recv().unwrap();
    // The callback thread is busy: the pool still serves everyone else.
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    assert_eq!(pool.apply_async(square, 4).unwrap().get().unwrap(), 16);
    gate_tx.send(()).unwrap();
    pool.apply_async(square, 2)
        .unwrap()
        .on_complete(|_| panic!("a callback that panics"));
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.apply_async(square, 3)
        .unwrap()
        .on_complete(move |r| tx.send(r.unwrap()).unwrap());
    assert_eq!(
        rx.recv_timeout(LIMIT).unwrap(),
        9,
        "callbacks go on after a panic"
    );
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

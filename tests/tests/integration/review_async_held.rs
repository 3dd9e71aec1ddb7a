//! Hostile review of the async/cancel change: attacks that held up (each
//! passes). Kept as regression tests: lost wake-ups, several wakers,
//! polls after `Ready`, cancels racing completions and each other and
//! `terminate`, callbacks that join, terminate, drop the pool or submit
//! more work, process leaks (threads: `review_async_leaks.rs`), recycling, deadlines, and the
//! in-process mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{
    record_then_sleep, recorded, running_task, sleep_ms, square, temp_path, wait_until, watchdog,
};

use crate::{FAULT_WORKER, LIMIT, pool};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

#[derive(Default)]
struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn thousands_of_short_awaits_on_a_current_thread_runtime_never_lose_a_wakeup() {
    let _w = watchdog("thousands_of_short_awaits", LIMIT);
    let pool = pool(2);
    current_thread().block_on(async {
        for i in 0..3000u64 {
            assert_eq!(pool.apply_async(square, i).unwrap().await.unwrap(), i * i);
        }
        for round in 0..30u64 {
            let all: Vec<_> = (0..100u64)
                .map(|i| pool.apply_async(square, round * 100 + i).unwrap())
                .collect();
            let got = futures::future::join_all(all).await;
            for (i, r) in got.into_iter().enumerate() {
                let x = round * 100 + i as u64;
                assert_eq!(r.unwrap(), x * x);
            }
        }
        for _ in 0..100 {
            let job = pool.with_chunksize(3).map_async(square, 0..50u64).unwrap();
            assert_eq!(job.await.unwrap().len(), 50);
        }
    });
}

#[test]
fn a_future_moved_between_wakers_wakes_the_last_and_is_taken_once() {
    let _w = watchdog("a_future_moved_between_wakers", LIMIT);
    let pool = pool(1);
    let mut fut = pool.apply_async(sleep_ms, 300).unwrap();
    let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
    let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
    let mut pin = std::pin::Pin::new(&mut fut);
    assert!(
        pin.as_mut()
            .poll(&mut Context::from_waker(&wa))
            .is_pending()
    );
    assert!(
        pin.as_mut()
            .poll(&mut Context::from_waker(&wb))
            .is_pending()
    );
    assert!(
        wait_until(LIMIT, || b.0.load(Ordering::SeqCst) > 0),
        "b is woken"
    );
    let r = loop {
        if let Poll::Ready(r) = pin.as_mut().poll(&mut Context::from_waker(&wb)) {
            break r;
        }
    };
    assert_eq!(r.unwrap(), 300);
    match pin.as_mut().poll(&mut Context::from_waker(&wa)) {
        Poll::Ready(Err(e)) => assert!(e.to_string().contains("already taken"), "{e}"),
        other => panic!("a poll after Ready gave {other:?}"),
    }
}

#[test]
fn cancels_racing_completions_and_each_other_end_every_task_once() {
    let _w = watchdog("cancels_racing_completions", LIMIT);
    let pool = Arc::new(pool(2));
    for i in 0..300u64 {
        let h = pool.apply_async(square, i).unwrap();
        let handles: Vec<_> = (0..4).map(|_| h.cancel_handle()).collect();
        let ts: Vec<_> = handles
            .into_iter()
            .map(|c| std::thread::spawn(move || c.cancel()))
            .collect();
        match h.get() {
            Ok(v) => assert_eq!(v, i * i),
            Err(e) => assert!(e.is_cancelled(), "{e}"),
        }
        for t in ts {
            t.join().unwrap();
        }
    }
    // Running tasks cancelled from many threads at once.
    for _ in 0..5 {
        let h = running_task(&pool);
        let c = h.cancel_handle();
        let ts: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.cancel())
            })
            .collect();
        assert!(h.get().unwrap_err().is_cancelled());
        for t in ts {
            t.join().unwrap();
        }
    }
    assert!(wait_until(LIMIT, || pool.worker_pids().len() == 2));
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
}

#[test]
fn cancel_during_terminate_and_join_ends_every_item_once() {
    let _w = watchdog("cancel_during_terminate_and_join", LIMIT);
    for stop in 0..2 {
        let pool = Arc::new(pool(2));
        let job = pool
            .with_chunksize(1)
            .map_async(sleep_ms, vec![200u64; 20])
            .unwrap();
        let c = job.cancel_handle();
        let p = pool.clone();
        let stopper = std::thread::spawn(move || if stop == 0 { p.terminate() } else { p.join() });
        c.cancel();
        c.cancel();
        let r = job.get();
        assert!(
            r.as_ref()
                .is_err_and(|e| e.is_cancelled() || e.is_terminated()),
            "{r:?}"
        );
        stopper.join().unwrap();
        assert!(pool.worker_pids().is_empty());
    }
}

#[test]
fn callbacks_that_join_terminate_drop_the_pool_or_submit_more_work() {
    let _w = watchdog("callbacks_that_join_terminate_drop", LIMIT);
    // Join, then terminate, from a callback.
    for stop in 0..2 {
        let pool = Arc::new(pool(1));
        let p = pool.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.apply_async(square, 3).unwrap().on_complete(move |r| {
            if stop == 0 {
                p.join()
            } else {
                p.terminate()
            }
            let _ = tx.send(r.unwrap());
        });
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 9);
        pool.join();
    }
    // The last handle to the pool dropped inside its own callback.
    {
        let pool = Arc::new(pool(1));
        let p = pool.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let h = pool.apply_async(square, 4).unwrap();
        drop(pool);
        h.on_complete(move |r| {
            drop(p);
            let _ = tx.send(r.unwrap());
        });
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 16);
    }
    // A chain of callbacks, each submitting the next.
    {
        let pool = Arc::new(pool(2));
        let (tx, rx) = crossbeam_channel::bounded(1);
        fn next(pool: Arc<Pool>, n: u64, tx: crossbeam_channel::Sender<u64>) {
            let p = pool.clone();
            pool.apply_async(square, n).unwrap().on_complete(move |r| {
                let v = r.unwrap();
                if n == 200 {
                    let _ = tx.send(v);
                } else {
                    next(p, n + 1, tx);
                }
            });
        }
        next(pool.clone(), 0, tx);
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 40_000);
        pool.join();
    }
}

#[test]
fn many_pools_with_callbacks_leak_no_worker() {
    let _w = watchdog("many_pools_with_callbacks_leak_nothing", LIMIT);
    let mut pids = Vec::new();
    for i in 0..15u64 {
        let pool = pool(2);
        pids.extend(pool.worker_pids());
        let done = Arc::new(AtomicUsize::new(0));
        for j in 0..20u64 {
            let d = done.clone();
            pool.apply_async(square, j).unwrap().on_complete(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Pending callbacks at the drop, half the time.
        let slow = pool.apply_async(sleep_ms, 100).unwrap();
        let d = done.clone();
        slow.on_complete(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        });
        if i % 2 == 0 {
            pool.join();
            assert_eq!(done.load(Ordering::SeqCst), 21);
        }
        drop(pool);
        assert_eq!(
            done.load(Ordering::SeqCst),
            21,
            "terminate ran every callback"
        );
    }
    for pid in pids {
        assert!(
            !procpool_tests::process_exists(pid),
            "worker {pid} left behind"
        );
    }
}

#[test]
fn cancel_with_recycling_and_deadlines_ends_every_item_once() {
    let _w = watchdog("cancel_with_recycling_and_deadlines", LIMIT);
    let file = temp_path("review-held-recycle");
    let pool = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .initializer(procpool_tests::init_store, file.display().to_string())
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    for round in 0..6u64 {
        let job = pool
            .with_chunksize(1)
            .with_timeout(Duration::from_millis(150))
            .imap_unordered(
                record_then_sleep,
                (0..8u64).map(move |i| (round * 100 + i, 100 + (i % 3) * 60)),
            )
            .unwrap();
        let c = job.cancel_handle();
        let consumer = std::thread::spawn(move || job.collect::<Vec<_>>());
        if round % 2 == 1 {
            c.cancel();
        }
        let outcomes = consumer.join().unwrap();
        for r in &outcomes {
            if let Err(e) = r {
                assert!(e.is_cancelled() || e.is_timeout(), "{e}");
            }
        }
    }
    pool.close();
    pool.join();
    assert!(
        recorded(&file).values().all(|&n| n == 1),
        "an item ran twice: {:?}",
        recorded(&file)
    );
}

#[test]
fn cancel_in_process_ends_every_item_once() {
    let _w = watchdog("cancel_in_process", LIMIT);
    let pool = Pool::builder()
        .workers(2)
        .in_process(procpool_tests::registry())
        .kill_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let job = pool
        .with_chunksize(1)
        .map_async(sleep_ms, vec![300u64; 10])
        .unwrap();
    job.cancel();
    assert!(job.get().unwrap_err().is_cancelled());
    let h = pool.apply_async(square, 5).unwrap();
    h.cancel();
    let r = h.get();
    assert!(matches!(r, Ok(25)) || r.as_ref().is_err_and(|e| e.is_cancelled()));
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
    pool.join();
}

/// A panic payload whose own Drop panics.
struct Nasty;
impl Drop for Nasty {
    fn drop(&mut self) {
        panic!("the payload's drop panics too");
    }
}

#[test]
fn callbacks_panicking_with_a_payload_whose_drop_panics_harm_nothing() {
    let _w = watchdog("callbacks_panicking_with_nasty_payloads", LIMIT);
    let pool = pool(1);
    for _ in 0..3 {
        pool.apply_async(square, 2)
            .unwrap()
            .on_complete(|_| std::panic::panic_any(Nasty));
        // A capture whose drop panics, after a normal return.
        let n = Nasty;
        pool.apply_async(square, 2).unwrap().on_complete(move |_| {
            let _keep = &n;
        });
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.apply_async(square, 3)
        .unwrap()
        .on_complete(move |r| tx.send(r.unwrap()).unwrap());
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 9);
    pool.join();
}

#[test]
fn a_stream_dropped_after_a_pending_poll_and_a_future_moved_between_runtimes() {
    let _w = watchdog("a_stream_dropped_after_pending", LIMIT);
    let pool = pool(2);
    let rt = current_thread();
    rt.block_on(async {
        for _ in 0..20 {
            let mut s = pool
                .with_chunksize(1)
                .imap(sleep_ms, vec![50u64; 40])
                .unwrap()
                .into_stream();
            use futures::StreamExt;
            tokio::select! {
                _ = s.next() => {}
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            drop(s);
        }
    });
    // Polled once on one runtime, finished on another (multi-thread).
    let mut fut = pool.apply_async(sleep_ms, 200).unwrap();
    rt.block_on(async {
        assert!(futures::FutureExt::now_or_never(&mut fut).is_none());
    });
    drop(rt);
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let r = mt.block_on(async move { tokio::spawn(fut).await.unwrap() });
    assert_eq!(r.unwrap(), 200);
    pool.close();
    pool.join();
}

//! Review 2 (lesser): in-process `join()` reaps a worker thread as soon as
//! its output ends, which is before the thread has returned: the reap
//! finds it "still busy", detaches it (never joined) and warns.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{registry, square, watchdog};

static DETACHED: AtomicUsize = AtomicUsize::new(0);

struct Count;
impl log::Log for Count {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.args().to_string().contains("still busy; detaching") {
            DETACHED.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

#[test]
fn join_detaches_idle_inprocess_threads() {
    let _w = watchdog(
        "join_detaches_idle_inprocess_threads",
        Duration::from_secs(120),
    );
    log::set_logger(&Count).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let rounds = 30;
    for _ in 0..rounds {
        let pool = Pool::builder()
            .workers(2)
            .in_process(registry())
            .build()
            .unwrap();
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        pool.join();
    }
    let n = DETACHED.load(Ordering::SeqCst);
    assert_eq!(
        n,
        0,
        "{n} idle worker threads of {} were detached by join()",
        2 * rounds
    );
}

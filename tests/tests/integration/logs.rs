//! `log` records emitted by task code in a worker reach the parent's
//! logger, tagged with the worker's pid and the task, filtered at the
//! parent's level.

use std::sync::Once;

use parking_lot::Mutex;
use procpool_tests::{log_lines, watchdog};

use crate::{LIMIT, pool};

pub(crate) struct Capture {
    pub(crate) records: Mutex<Vec<(log::Level, String, String)>>,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.records.lock().push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

pub(crate) static CAPTURE: Capture = Capture {
    records: Mutex::new(Vec::new()),
};

/// Installs [`CAPTURE`] as this test process's logger, at `Info`, once
/// (other modules capture through it too).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

#[test]
fn worker_logs_reach_the_parents_logger() {
    let _w = watchdog("worker_logs_reach_the_parents_logger", LIMIT);
    install();
    let pool = pool(1);
    let pid = pool.worker_pids()[0];
    assert_eq!(
        pool.apply(log_lines, ("tag-7f3a".to_owned(), 3)).unwrap(),
        3
    );
    let ours: Vec<_> = CAPTURE
        .records
        .lock()
        .iter()
        .filter(|(_, _, m)| m.contains("tag-7f3a"))
        .cloned()
        .collect();
    assert_eq!(ours.len(), 3, "{ours:?}");
    for (i, (level, target, message)) in ours.iter().enumerate() {
        assert_eq!(*level, log::Level::Warn);
        assert_eq!(target, "procpool_tests");
        assert_eq!(
            message,
            &format!("[worker {pid} `procpool_tests::log_lines`] tag-7f3a line {i}")
        );
    }
}

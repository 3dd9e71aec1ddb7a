//! The zygote start method: workers forked from a process that ran the
//! initializer once.

use std::time::Duration;

use procpool::{Pool, StartMethod};
use procpool_tests::{init_store, init_value, pid, square, watchdog};

use crate::{FAULT_WORKER, LIMIT};

fn ppid_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn workers_are_forked_from_one_zygote_with_the_initializers_state() {
    let _w = watchdog(
        "workers_are_forked_from_one_zygote_with_the_initializers_state",
        LIMIT,
    );
    let pool = Pool::builder()
        .workers(3)
        .worker_program(FAULT_WORKER)
        .start_method(StartMethod::Zygote)
        .initializer(init_store, "made once".to_owned())
        .build()
        .unwrap();
    assert_eq!(
        pool.map(square, 0..100u64).unwrap(),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>()
    );
    let pids = pool.worker_pids();
    let parents: std::collections::HashSet<u32> = pids.iter().map(|&p| ppid_of(p)).collect();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_ne!(*parents.iter().next().unwrap(), std::process::id());
    for _ in 0..10 {
        assert_eq!(
            pool.apply(init_value, ()).unwrap().as_deref(),
            Some("made once")
        );
    }
    assert_eq!(pool.stats().workers_forked, 3);
    let _ = pool.apply(pid, ());
    std::thread::sleep(Duration::from_millis(1));
    pool.join();
}

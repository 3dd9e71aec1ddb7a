//! A program that builds a zygote pool of fault workers and keeps it busy
//! until it is killed: `zygote-host FAULT_WORKER`. It prints one line,
//! `pids <zygote> <worker> <worker>`, once two tasks hang in the workers.

use std::io::Write;
use std::time::Duration;

fn main() {
    let program = std::env::args().nth(1).expect("the fault worker's path");
    let pool = procpool::Pool::builder()
        .workers(2)
        .worker_program(program)
        .start_method(procpool::StartMethod::Zygote)
        .build()
        .expect("the zygote pool starts");
    let workers = pool.worker_pids();
    let zygote = pool
        .apply(procpool_tests::parent_pid, ())
        .expect("a worker answers");
    // Both workers busy for good: only their watch of the pool ends them.
    let _hung: Vec<_> = (0..2)
        .map(|_| {
            pool.apply_async(procpool_tests::sleep_ms, 3_600_000)
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut out = std::io::stdout().lock();
    writeln!(out, "pids {zygote} {} {}", workers[0], workers[1]).unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::park();
    }
}

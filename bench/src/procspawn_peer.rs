//! The procspawn peer (rows b and k): the round trip of one call through
//! a `procspawn::Pool`, its cheapest documented way to run a function in
//! another process (`procspawn::spawn` starts a process per call; a pool
//! keeps its processes). A call is `pool.spawn(x, square)` then `join()`
//! on its handle, for the same task as procpool's `apply`.
//!
//! procspawn is built without its default features (`Cargo.toml`): no
//! backtrace of a remote panic, and no shared-library lookup around every
//! call, which its docs name as an overhead; `main` makes the promise that
//! lookup would have checked (`procspawn::assert_spawn_is_safe`). With the
//! defaults a call took 10–18% longer here.
//!
//! procspawn runs its children as this program started again: `main`
//! calls `procspawn::init()` (after `procpool::serve_if_worker`), which
//! in such a child serves procspawn and exits, and elsewhere returns.

use std::time::Instant;

use crate::square;

/// The pid of the process that runs it: for a pool of one, its worker.
fn own_pid(_: ()) -> u32 {
    std::process::id()
}

/// A procspawn pool of `workers` processes, each having answered a call.
pub(crate) fn pool(workers: usize) -> procspawn::Pool {
    let pool = procspawn::Pool::new(workers).expect("procspawn pool");
    for i in 0..workers as u64 * 4 {
        call(&pool, i);
    }
    pool
}

/// The pid of the worker of `pool`, a pool of one.
pub(crate) fn worker_pid(pool: &procspawn::Pool) -> u32 {
    assert_eq!(pool.size(), 1);
    pool.spawn((), own_pid).join().expect("procspawn call")
}

fn call(pool: &procspawn::Pool, x: u64) -> u64 {
    let r = pool.spawn(x, square).join().expect("procspawn call");
    assert_eq!(r, square(x));
    r
}

/// `n` call round trips through `pool` (after 50 for warm-up), in
/// seconds.
pub(crate) fn round_trips(pool: &procspawn::Pool, n: usize) -> Vec<f64> {
    for i in 0..50 {
        call(pool, i);
    }
    (0..n as u64)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(call(pool, i));
            t.elapsed().as_secs_f64()
        })
        .collect()
}

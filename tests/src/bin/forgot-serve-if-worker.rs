//! A program that forgot `procpool::serve_if_worker`: it builds a pool in
//! re-exec mode and returns the error from `main`, as a user's program
//! would. What it prints is checked by the `forgot_serve_if_worker` tests.
//!
//! With `FORGOT_IN_WORKERS_ONLY` set (workers inherit it), only the
//! parent calls `serve_if_worker`: the pool starts its copies, which reach
//! `build()` in worker mode instead of serving.
//!
//! With `ASKS_IS_WORKER` set, it serves the other way a program may:
//! `if is_worker() { worker::run(&tasks) }`, and its pool works.
//!
//! With `ZYGOTE` set, its pool forks its workers from a zygote.

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), procpool::Error> {
    let tasks = procpool::Registry::new().task(square);
    if std::env::var_os("ASKS_IS_WORKER").is_some() && procpool::worker::is_worker() {
        procpool::worker::run(&tasks);
    }
    if std::env::var_os("FORGOT_IN_WORKERS_ONLY").is_some() && !procpool::worker::is_worker() {
        procpool::serve_if_worker(&tasks);
    }
    let method = match std::env::var_os("ZYGOTE") {
        Some(_) => procpool::StartMethod::Zygote,
        None => procpool::StartMethod::Exec,
    };
    let pool = procpool::Pool::builder()
        .workers(4)
        .start_method(method)
        .build()?;
    println!("{:?}", pool.map(square, 0..4u64)?);
    Ok(())
}

//! The main job in one run: map a real workload over a million items in
//! worker processes, then survive a task that segfaults.
//!
//! `cargo run --release -p procpool --example demo [-- ITEMS]`

use std::time::Instant;

/// Steps of the Collatz sequence from `n` to 1.
fn steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// The longest Collatz run among the 16 numbers of block `b`: honest CPU
/// work, a few microseconds per item.
fn collatz_steps(b: u64) -> u32 {
    (b * 16..b * 16 + 16).map(steps).max().unwrap_or(0)
}

/// Parses a record; record 13 trips a "bug in a C library" and the process
/// dies of SIGSEGV, as it would with real memory corruption.
fn fragile_parse(record: u64) -> u64 {
    if record == 13 {
        // SAFETY: restores the default action of SIGSEGV for this (worker)
        // process and raises it: the worker dies, which is the demonstration.
        unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        }
    }
    record * 10
}

fn main() -> Result<(), procpool::Error> {
    let tasks = procpool::Registry::new()
        .task(collatz_steps)
        .task(fragile_parse);
    procpool::serve_if_worker(&tasks);

    let items: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    let started = Instant::now();
    let pool = procpool::Pool::builder().build()?;
    println!(
        "pool of {} worker processes {:?} ready in {:.1?}",
        pool.workers(),
        pool.worker_pids(),
        started.elapsed()
    );

    let t = Instant::now();
    let steps = pool.map(collatz_steps, 1..=items)?;
    let pooled = t.elapsed();
    let longest = steps.iter().copied().max().unwrap_or(0);
    let t = Instant::now();
    let serial: u32 = (1..=items).map(collatz_steps).max().unwrap_or(0);
    let alone = t.elapsed();
    assert_eq!(serial, longest);
    println!(
        "map over {items} items: {pooled:.2?} in the pool ({:.0} items/s), {alone:.2?} in one thread; \
         the longest Collatz run below {} takes {longest} steps",
        items as f64 / pooled.as_secs_f64(),
        (items + 1) * 16
    );

    println!("parsing 20 records one per task; record 13 segfaults its worker:");
    for (record, outcome) in pool
        .with_chunksize(1)
        .imap(fragile_parse, 0..20u64)?
        .enumerate()
    {
        match outcome {
            Ok(v) if record % 5 == 0 => println!("  record {record:>2}: ok ({v})"),
            Ok(_) => {}
            Err(e) => println!("  record {record:>2}: {e}"),
        }
    }
    let stats = pool.stats();
    println!(
        "done: {} tasks ok, {} failed, {} workers started, {} lost; the pool kept going",
        stats.tasks_succeeded, stats.tasks_failed, stats.workers_started, stats.worker_deaths
    );
    pool.close();
    pool.join();
    Ok(())
}

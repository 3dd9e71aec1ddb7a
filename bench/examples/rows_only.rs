//! A/B aid: some of the harness's rows alone, measured as `main.rs` does,
//! with the CPU column, so two builds can be run alternately:
//!
//! ```sh
//! rows_only c,d,e,k,idle
//! ```
//!
//! - `c`: `map` of `x * x` over 1M `u64`, median of 3;
//! - `d`: `imap_unordered` with chunk size 1 over 200,000 items, median of 3;
//! - `e`: CPU-bound `map`, 200 items of ~10 ms, 5 interleaved rounds of
//!   serial / pool / rayon, rayon's time over ours;
//! - `k`: `apply` p50 on a pool of 1, caller and worker pinned to one CPU,
//!   then to two (3 rounds × 5,000 calls per placement);
//! - `idle`: the CPU the parent and the workers use over 200 ms of an idle
//!   pool, right after a burst of `imap_unordered`.
//!
//! It reads only the pool's public API, so the same file builds against
//! older commits (for before/after tables).

use std::time::{Duration, Instant};

use procpool::{Pool, Registry};

#[path = "../src/cpu.rs"]
mod cpu;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn spin(iters: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..iters {
        acc = std::hint::black_box((acc.wrapping_mul(31).wrapping_add(i)) & 0xFFFF_FFFF);
    }
    acc
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn calibrate_spin(target: Duration) -> u64 {
    let mut iters = 100_000u64;
    loop {
        let t = Instant::now();
        std::hint::black_box(spin(iters));
        let dt = t.elapsed();
        if dt >= target / 4 {
            return (iters as f64 * target.as_secs_f64() / dt.as_secs_f64()) as u64;
        }
        iters *= 2;
    }
}

fn pin(pid: u32, cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes into the set; `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads the set we pass.
    let rc =
        unsafe { libc::sched_setaffinity(pid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity");
}

fn unpin_self() {
    // SAFETY: as in `pin`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..2 {
        // SAFETY: as in `pin`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: as in `pin`.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity");
}

/// A throughput row: the median of 3 runs of `run(n)` (which returns how
/// many results it got), with the CPU column.
fn rate_row(label: &str, n: u64, workers: &[u32], run: impl Fn(u64) -> usize) {
    let mut meter = cpu::Meter::default();
    let rate = median(
        (0..3)
            .map(|_| {
                meter.measure(workers, || {
                    let t = Instant::now();
                    assert_eq!(run(n) as u64, n);
                    n as f64 / t.elapsed().as_secs_f64()
                })
            })
            .collect(),
    );
    println!(
        "{label} {:>9.0}/s  {}",
        rate,
        meter.column(3.0 * n as f64, "item", 1e9, "ns")
    );
}

fn main() {
    let tasks = Registry::new().task(square).task(spin);
    procpool::serve_if_worker(&tasks);
    let rows = std::env::args().nth(1).unwrap_or_else(|| "d,e".into());
    let rows: Vec<&str> = rows.split(',').collect();
    let pool = Pool::builder().workers(2).build().unwrap();
    pool.apply(square, 1).unwrap();
    let workers = pool.worker_pids();

    if rows.contains(&"c") {
        rate_row("c  map           ", 1_000_000, &workers, |n| {
            pool.map(square, 0..n).unwrap().len()
        });
    }
    if rows.contains(&"d") {
        rate_row("d  imap_unord c=1", 200_000, &workers, |n| {
            pool.with_chunksize(1)
                .imap_unordered(square, 0..n)
                .unwrap()
                .map(Result::unwrap)
                .count()
        });
    }
    if rows.contains(&"e") {
        let iters = calibrate_spin(Duration::from_millis(10));
        let items = vec![iters; 200];
        let rayon_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut meter = cpu::Meter::default();
        let (mut serial_t, mut pool_t, mut rayon_t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            let serial: Vec<u64> = items.iter().map(|&i| spin(i)).collect();
            serial_t.push(t.elapsed().as_secs_f64());
            let pooled = meter.measure(&workers, || {
                let t = Instant::now();
                let pooled = pool.map(spin, items.clone()).unwrap();
                pool_t.push(t.elapsed().as_secs_f64());
                pooled
            });
            assert_eq!(pooled, serial);
            let t = Instant::now();
            let par: Vec<u64> = rayon_pool.install(|| {
                use rayon::prelude::*;
                items.par_iter().map(|&i| spin(i)).collect()
            });
            rayon_t.push(t.elapsed().as_secs_f64());
            assert_eq!(par, serial);
        }
        let (s, p, r) = (median(serial_t), median(pool_t), median(rayon_t));
        println!(
            "e  cpu-bound      {:.2} of rayon (ours {:.2}×, rayon {:.2}×)  {}",
            r / p,
            s / p,
            s / r,
            meter.column(5.0, "run", 1e3, "ms")
        );
    }
    if rows.contains(&"idle") {
        let n = 20_000u64;
        let _ = pool
            .with_chunksize(1)
            .imap_unordered(square, 0..n)
            .unwrap()
            .count();
        let mut meter = cpu::Meter::default();
        meter.measure(&workers, || std::thread::sleep(Duration::from_millis(200)));
        println!(
            "idle 200 ms       {}",
            meter.column(1.0, "200 ms", 1e6, "µs")
        );
    }
    drop(pool);
    if rows.contains(&"k") {
        let pool = Pool::builder().workers(1).build().unwrap();
        pool.apply(square, 1).unwrap();
        let worker = pool.worker_pids()[0];
        let (mut same, mut diff) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            for (cpu_w, out) in [(0, &mut same), (1, &mut diff)] {
                pin(worker, cpu_w);
                pin(0, 0);
                let lat: Vec<f64> = (0..5_100u64)
                    .map(|i| {
                        let t = Instant::now();
                        std::hint::black_box(pool.apply(square, i).unwrap());
                        t.elapsed().as_secs_f64()
                    })
                    .skip(100)
                    .collect();
                out.push(median(lat));
                unpin_self();
            }
        }
        println!(
            "k  apply p50      same CPU {:.1} µs, different CPUs {:.1} µs (rounds: {:?} / {:?})",
            median(same.clone()) * 1e6,
            median(diff.clone()) * 1e6,
            same.iter()
                .map(|s| (s * 1e7).round() / 10.0)
                .collect::<Vec<_>>(),
            diff.iter()
                .map(|s| (s * 1e7).round() / 10.0)
                .collect::<Vec<_>>(),
        );
    }
}

//! Profiling aid: `apply` round trips of a trivial task, p50 and p99.
use std::time::Instant;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn main() {
    let tasks = procpool::Registry::new().task(square);
    procpool::serve_if_worker(&tasks);
    let pool = procpool::Pool::builder().workers(2).build().unwrap();
    for _ in 0..3 {
        let mut lat: Vec<f64> = (0..20_000u64)
            .map(|i| {
                let t = Instant::now();
                std::hint::black_box(pool.apply(square, i).unwrap());
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        println!(
            "apply p50 {:.1} µs  p99 {:.1} µs",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    }
}

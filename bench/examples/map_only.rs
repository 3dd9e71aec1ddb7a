//! Profiling aid: `map` of `x * x` over 1M `u64`, items per second, median
//! of 9 runs. Used for A/B comparisons between two builds run alternately.
use std::time::Instant;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn main() {
    let tasks = procpool::Registry::new().task(square);
    procpool::serve_if_worker(&tasks);
    let pool = procpool::Pool::builder().workers(2).build().unwrap();
    let mut rates: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            let v: Vec<u64> = pool.map(square, 0..1_000_000u64).unwrap();
            std::hint::black_box(v);
            1e6 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!("map 1M u64: median {:.2} M items/s", rates[4] / 1e6);
}

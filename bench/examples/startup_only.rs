//! Profiling aid: build a pool of 2 workers and get the first result back,
//! 40 times; the median. Used for A/B comparisons between two builds.
use std::time::Instant;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn main() {
    let tasks = procpool::Registry::new().task(square);
    procpool::serve_if_worker(&tasks);
    let mut ms: Vec<f64> = (0..40)
        .map(|_| {
            let t = Instant::now();
            let pool = procpool::Pool::builder().workers(2).build().unwrap();
            std::hint::black_box(pool.apply(square, 3).unwrap());
            let e = t.elapsed().as_secs_f64() * 1e3;
            drop(pool);
            e
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "start-up, 2 workers + first result: median {:.3} ms",
        ms[20]
    );
}

//! Profiling aid: the CPU-bound workload of the benchmark, pool beside
//! rayon, several interleaved rounds.
use std::time::Instant;

fn spin(iters: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..iters {
        acc = std::hint::black_box((acc.wrapping_mul(31).wrapping_add(i)) & 0xFFFF_FFFF);
    }
    acc
}

fn main() {
    let tasks = procpool::Registry::new().task(spin);
    procpool::serve_if_worker(&tasks);
    let pool = procpool::Pool::builder().workers(2).build().unwrap();
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let items = vec![5_000_000u64; 200];
    for _ in 0..4 {
        let t = Instant::now();
        let a = pool.map(spin, items.clone()).unwrap();
        let auto = t.elapsed();
        let t = Instant::now();
        let b = pool.with_chunksize(2).map(spin, items.clone()).unwrap();
        let small = t.elapsed();
        let t = Instant::now();
        let c: Vec<u64> = rayon_pool.install(|| {
            use rayon::prelude::*;
            items.par_iter().map(|&i| spin(i)).collect()
        });
        let r = t.elapsed();
        assert!(a == b && b == c);
        println!("pool auto {auto:?}  pool chunk 2 {small:?}  rayon {r:?}");
    }
}

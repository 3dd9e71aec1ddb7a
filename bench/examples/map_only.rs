//! Profiling aid: only the 1M-item map of the benchmark, repeated.
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}
fn main() {
    let tasks = procpool::Registry::new().task(square);
    procpool::serve_if_worker(&tasks);
    let pool = procpool::Pool::builder().workers(2).build().unwrap();
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let v = pool.map(square, 0..1_000_000u64).unwrap();
        let dt = t.elapsed();
        eprintln!("{:.0} items/s", 1e6 / dt.as_secs_f64());
        assert_eq!(v.len(), 1_000_000);
    }
}

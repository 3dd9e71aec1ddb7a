//! The tour: procpool's main job with the faults it exists for.
//!
//! Hashes a few hundred thousand records in worker processes with a live
//! progress bar, while one record segfaults its worker and another hangs
//! past its deadline. Both cost one task each; the pool replaces the dead
//! workers and finishes the rest. Ends with a summary.
//!
//! ```sh
//! cargo run --release -p procpool --example tour [-- RECORDS]
//! RUST_LOG=procpool=info cargo run --release -p procpool --example tour   # the pool's own log
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The record that trips a "bug in a C library": its worker segfaults.
const CRASHING: u64 = 12_345;
/// The record that never finishes: its deadline kills its worker.
const HANGING: u64 = 23_456;
/// A deadline per record.
const DEADLINE: Duration = Duration::from_millis(200);

/// Hashes record `r`: some tens of microseconds of honest integer work.
fn digest(r: u64) -> u64 {
    let mut h = r ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        h = h.rotate_left(17).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 31);
    }
    h
}

/// The task: like `digest`, with the two faulty records.
fn hash_record(r: u64) -> u64 {
    if r == CRASHING {
        // SAFETY: restores SIGSEGV's default action in this worker process
        // and raises it, as a wild pointer in C code would.
        unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        }
    }
    if r == HANGING {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    digest(r)
}

fn main() -> Result<(), procpool::Error> {
    let tasks = procpool::Registry::new().task(hash_record);
    procpool::serve_if_worker(&tasks);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();

    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60_000)
        .max(HANGING + 1);

    println!("procpool tour: {records} records, one that segfaults, one that hangs\n");
    let t = Instant::now();
    let pool = procpool::Pool::builder().build()?;
    println!(
        "  pool     {} worker processes {:?}, ready in {:.1?}",
        pool.workers(),
        pool.worker_pids(),
        t.elapsed()
    );
    println!("  deadline {DEADLINE:?} per record: a hung record costs its worker, not the run\n");

    let bar = ProgressBar::new(records).with_style(
        ProgressStyle::with_template(
            "  {bar:40.cyan/blue} {percent:>3}% {human_pos:>7}/{human_len} records  {elapsed} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    let t = Instant::now();
    let mut ok = 0u64;
    let mut failures: BTreeMap<u64, procpool::Error> = BTreeMap::new();
    let mut checksum = 0u64;
    let results = pool.with_timeout(DEADLINE).imap(hash_record, 0..records)?;
    for (r, result) in results.enumerate() {
        match result {
            Ok(h) => {
                ok += 1;
                checksum ^= h;
            }
            Err(e) => {
                failures.insert(r as u64, e);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let pooled = t.elapsed();

    // The same work in one thread, for scale (the faulty records skipped).
    let t = Instant::now();
    let serial = (0..records)
        .filter(|r| *r != CRASHING && *r != HANGING)
        .fold(0u64, |acc, r| acc ^ digest(r));
    let alone = t.elapsed();
    assert_eq!(serial, checksum, "the pool and one thread agree");

    let stats = pool.stats();
    println!("summary");
    println!(
        "  done     {ok} records in {pooled:.2?} ({:.0} records/s); one thread takes {alone:.2?}",
        ok as f64 / pooled.as_secs_f64()
    );
    for (r, e) in &failures {
        println!("  failed   record {r}: {e}");
    }
    println!(
        "  workers  {} started, {} lost ({} to deadlines) and replaced",
        stats.workers_started, stats.worker_deaths, stats.timeouts
    );
    println!("  checksum {checksum:016x} (matches one thread)");
    pool.close();
    pool.join();
    Ok(())
}

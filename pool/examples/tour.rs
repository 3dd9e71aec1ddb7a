//! The tour: procpool's main job with the faults it exists for.
//!
//! Hashes tens of thousands of records in worker processes with a live
//! progress bar, while one record segfaults its worker and another hangs
//! past its deadline. Both cost one task each; the pool replaces the dead
//! workers and finishes the rest. Ends with the same work in one thread,
//! for comparison, and a summary.
//!
//! At a terminal the crash and the deadline kill are reported above the
//! bar as they happen, and a spinner says what runs once the bar is gone;
//! piped, the output is the summary alone.
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

    // A bar as wide as the terminal leaves (a fixed one wraps in 80 columns).
    let bar = ProgressBar::new(records).with_style(
        ProgressStyle::with_template(
            "  {wide_bar:.cyan/blue} {percent:>3}% {human_pos:>7}/{human_len} records  {elapsed} eta {eta}",
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
                // Above the bar, as it happens (at a terminal only, like
                // the bar itself); the summary lists it again.
                bar.println(as_it_happens(r as u64, &e));
                failures.insert(r as u64, e);
            }
        }
        bar.inc(1);
    }
    if !failures.is_empty() {
        // A blank line between those reports and what follows, also only
        // at a terminal.
        bar.println("");
    }
    bar.finish_and_clear();
    let pooled = t.elapsed();

    // The same work in one thread, for scale (the records that failed
    // skipped), with a spinner that says so while it runs.
    let next = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("  {spinner:.cyan} {msg} {elapsed}")
                .expect("a valid template"),
        )
        .with_message(format!(
            "pool done in {:.2}s; now the same work in one thread, for comparison",
            pooled.as_secs_f64()
        ));
    next.enable_steady_tick(Duration::from_millis(100));
    let t = Instant::now();
    let serial = (0..records)
        .filter(|r| !failures.contains_key(r))
        .fold(0u64, |acc, r| acc ^ digest(r));
    let alone = t.elapsed();
    next.finish_and_clear();
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
    // Any other failure is a record stalled past its deadline on a busy
    // machine (or the summary shows what else it was).
    let others: Vec<&procpool::Error> = failures
        .iter()
        .filter(|(r, _)| **r != CRASHING && **r != HANGING)
        .map(|(_, e)| e)
        .collect();
    if !others.is_empty() && others.iter().all(|e| e.is_timeout()) {
        println!(
            "  note     only records {CRASHING} and {HANGING} are faulty: on a busy machine a \
             stalled worker can pass a {DEADLINE:?} deadline too"
        );
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

/// A failed record as it happens, in a line that fits a terminal: what
/// happened to the worker, from the error's own accessors. The summary
/// gives the whole error.
fn as_it_happens(r: u64, e: &procpool::Error) -> String {
    let pid = e.worker_pid().map_or_else(|| "?".into(), |p| p.to_string());
    if e.is_timeout() {
        format!("  deadline record {r}: over {DEADLINE:?}, worker {pid} killed and replaced")
    } else if let Some(exit) = e.exit() {
        format!("  crash    record {r}: worker {pid} ended ({exit}), replaced")
    } else {
        format!("  failed   record {r}: {e}")
    }
}

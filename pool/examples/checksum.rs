//! A real-world job: checksum every file under a directory in worker
//! processes, with a progress bar, beside the same work in one thread.
//!
//! ```sh
//! cargo run --release -p procpool --example checksum -- [DIR]   # default: this repository
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressIterator, ProgressStyle};

/// The 64-bit FNV-1a hash and the size of a file, or why it could not be
/// read (the task's own error: a value, not a pool failure).
fn checksum_file(path: String) -> Result<(u64, u64), String> {
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Ok((hash, bytes.len() as u64))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

fn main() -> Result<(), procpool::Error> {
    let tasks = procpool::Registry::new().task(checksum_file);
    procpool::serve_if_worker(&tasks);

    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let mut files = Vec::new();
    files_under(Path::new(&dir), &mut files);
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    println!("checksumming {} files under {dir}", paths.len());

    let pool = procpool::Pool::builder().build()?;
    let style = ProgressStyle::with_template(
        "  {bar:40} {human_pos}/{human_len} files  {elapsed} eta {eta}",
    )
    .expect("a valid template");
    let t = Instant::now();
    let (mut bytes, mut digest, mut unreadable) = (0u64, 0u64, 0u64);
    let results = pool.imap_unordered(checksum_file, paths.clone())?;
    for result in results.progress_with(ProgressBar::new(paths.len() as u64).with_style(style)) {
        match result? {
            Ok((hash, size)) => {
                bytes += size;
                digest ^= hash;
            }
            Err(_) => unreadable += 1,
        }
    }
    let pooled = t.elapsed();

    let t = Instant::now();
    let serial = paths
        .iter()
        .filter_map(|p| checksum_file(p.clone()).ok())
        .fold(0u64, |acc, (h, _)| acc ^ h);
    let alone = t.elapsed();
    assert_eq!(serial, digest, "the pool and one thread agree");

    println!(
        "  {:.1} MiB in {pooled:.2?} with {} workers, {alone:.2?} in one thread; \
         {unreadable} unreadable; combined digest {digest:016x}",
        bytes as f64 / (1 << 20) as f64,
        pool.workers()
    );
    Ok(())
}

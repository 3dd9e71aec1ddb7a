//! From one laptop to two hosts: the same program, its workers spread over
//! this machine and the hosts ssh reaches, with a host that is lost
//! costing only what ran there.
//!
//! ```sh
//! # this machine only
//! cargo run --release -p procpool --example cluster
//! # plus two hosts, the binary copied to each once per build
//! cargo run --release -p procpool --example cluster -- --ship alice@node1 bob@node2
//! # plus a Slurm allocation: two workers started by srun
//! cargo run --release -p procpool --example cluster -- --srun 2
//! # no ssh at hand: a stand-in launcher that runs the workers here
//! cargo run --release -p procpool --example cluster -- --stand-in 2
//! ```
//!
//! Every host needs ssh access without a prompt (keys or an agent:
//! `ssh node1 true` must work) and, without `--ship`, this program at the
//! same path.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use procpool::{Launcher, Pool, Ssh};

/// Which host ran the task, and a result: the number's count of divisors
/// (some honest work).
fn divisors_on(n: u64) -> (String, u64) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let count = (1..=n.isqrt()).filter(|d| n.is_multiple_of(*d)).count() as u64 * 2;
    (format!("{host} (pid {})", std::process::id()), count)
}

fn main() -> Result<(), procpool::Error> {
    let tasks = procpool::Registry::new().task(divisors_on);
    procpool::serve_if_worker(&tasks);

    let mut builder = Pool::builder().workers(2);
    let mut args = std::env::args().skip(1).peekable();
    let mut ship = false;
    while let Some(arg) = args.next() {
        let count = |a: Option<String>| a.and_then(|n| n.parse().ok()).unwrap_or(1);
        builder = match arg.as_str() {
            "--ship" => {
                ship = true;
                builder
            }
            "--srun" => builder.remote(
                Launcher::command(["srun", "-u", "--nodes=1", "--ntasks=1", "--"])
                    .name("slurm")
                    .workers(count(args.next())),
            ),
            "--stand-in" => builder.remote(
                Launcher::command(["sh", "-c", "exec \"$@\"", "stand-in"])
                    .name("stand-in")
                    .workers(count(args.next())),
            ),
            host => builder.remote(
                Ssh::host(host)
                    .workers(4)
                    .ship_binary(ship)
                    .keepalive(Duration::from_secs(2)),
            ),
        };
    }
    let start = Instant::now();
    let pool = builder.build()?;
    println!(
        "{} workers ready in {:.0} ms",
        pool.workers(),
        start.elapsed().as_secs_f64() * 1e3
    );

    let start = Instant::now();
    let mut by_host: BTreeMap<String, u64> = BTreeMap::new();
    let (mut total, mut lost) = (0u64, 0u64);
    for result in pool.imap_unordered(divisors_on, 1_000_000_000..1_000_020_000u64)? {
        match result {
            Ok((host, count)) => {
                let host = host.split(" (").next().unwrap_or_default().to_owned();
                *by_host.entry(host).or_default() += 1;
                total += count;
            }
            // A host lost mid-run: what ran there is reported, never run
            // twice; the rest went elsewhere.
            Err(e) if e.is_host_lost() || e.is_worker_died() => {
                eprintln!("lost: {e}");
                lost += 1;
            }
            Err(e) => return Err(e),
        }
    }
    println!(
        "20000 numbers in {:.2} s: {total} divisors in all, {lost} task(s) lost",
        start.elapsed().as_secs_f64()
    );
    for (host, n) in by_host {
        println!("  {host:<24} {n:>6} tasks");
    }
    pool.close();
    pool.join();
    Ok(())
}

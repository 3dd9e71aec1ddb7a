//! procpool beside its peers, in one run: Python's `multiprocessing.Pool`
//! (spawn), rayon (the in-process ceiling) and a raw pipe round trip (the
//! floor). Prints a table of medians and ratios; then the zygote start
//! method against exec (`zygote.rs`). See `bench/README.md`.
//!
//! `cargo run --release -p procpool-bench [-- --quick]`

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::{Pool, Registry};

mod zygote;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// A deterministic busy loop: `iters` steps of integer work.
fn spin(iters: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..iters {
        acc = std::hint::black_box((acc.wrapping_mul(31).wrapping_add(i)) & 0xFFFF_FFFF);
    }
    acc
}

/// Writes its worker's pid to `path`, then sleeps: a task whose start is
/// visible.
fn announce_and_sleep(path: String, ms: u64) -> u64 {
    std::fs::write(&path, std::process::id().to_string()).expect("marker");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn registry() -> Registry {
    zygote::register(
        Registry::new()
            .task(square)
            .task(spin)
            .task(announce_and_sleep),
    )
}

struct Sizes {
    startups: usize,
    applies: usize,
    map_items: u64,
    imap_items: u64,
    cpu_items: usize,
    crashes: usize,
    mem_items: u64,
}

/// Rounds of the throughput workloads; their medians are reported.
const ROUNDS: usize = 3;
/// Interleaved rounds of the CPU-bound workload (this machine's speed
/// drifts by tens of percent within seconds).
const CPU_ROUNDS: usize = 5;

const FULL: Sizes = Sizes {
    startups: 20,
    applies: 20_000,
    map_items: 1_000_000,
    imap_items: 200_000,
    cpu_items: 200,
    crashes: 20,
    mem_items: 10_000_000,
};

const QUICK: Sizes = Sizes {
    startups: 3,
    applies: 300,
    map_items: 20_000,
    imap_items: 2_000,
    cpu_items: 8,
    crashes: 3,
    mem_items: 100_000,
};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)]
}

fn main() {
    let tasks = registry();
    procpool::serve_if_worker(&tasks);

    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--raw-echo") {
        raw_echo();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--mem-imap") {
        mem_imap(args[i + 1].parse().expect("item count"));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = if quick { &QUICK } else { &FULL };
    run(sizes, quick);
}

/// The raw floor's child: echoes 12-byte frames (4-byte length + u64).
fn raw_echo() {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut frame = [0u8; 12];
    while input.read_exact(&mut frame).is_ok() {
        let x = u64::from_le_bytes(frame[4..].try_into().unwrap());
        frame[4..].copy_from_slice(&square(x).to_le_bytes());
        if output
            .write_all(&frame)
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
}

/// Runs an imap over `n` generated items and reports this process's peak
/// RSS and one idle worker's RSS, in KiB.
fn mem_imap(n: u64) {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut sum = 0u64;
    for r in pool.imap(square, 0..n).unwrap() {
        sum = sum.wrapping_add(r.unwrap());
    }
    std::hint::black_box(sum);
    let worker = pool.worker_pids()[0];
    println!(
        "{} {}",
        status_kib("self", "VmHWM"),
        status_kib(&worker.to_string(), "VmRSS")
    );
}

fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap()
}

struct Row {
    name: &'static str,
    ours: String,
    peer: String,
    ratio: String,
    target: &'static str,
}

fn run(sizes: &Sizes, quick: bool) {
    eprintln!(
        "procpool-bench: measuring procpool{}",
        if quick { " (quick)" } else { "" }
    );
    let mut rows = Vec::new();

    // a. start-up.
    let startup = median(
        (0..sizes.startups)
            .map(|_| {
                let t = Instant::now();
                let pool = Pool::builder().workers(2).build().unwrap();
                pool.apply(square, 3).unwrap();
                let dt = t.elapsed().as_secs_f64();
                drop(pool);
                dt
            })
            .collect(),
    );

    let pool = Pool::builder().workers(2).build().unwrap();
    pool.apply(square, 1).unwrap();

    // b. apply round trips, and the raw pipe floor.
    let lat: Vec<f64> = (0..sizes.applies as u64)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(pool.apply(square, i).unwrap());
            t.elapsed().as_secs_f64()
        })
        .collect();
    let (apply_p50, apply_p99) = (median(lat.clone()), percentile(lat, 0.99));
    let raw = raw_round_trips(sizes.applies);
    let (raw_p50, raw_p99) = (median(raw.clone()), percentile(raw, 0.99));

    // c. map of x*x, automatic chunk size (median of rounds).
    let map_rate = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                let squares = pool.map(square, 0..sizes.map_items).unwrap();
                let rate = sizes.map_items as f64 / t.elapsed().as_secs_f64();
                assert_eq!(squares.len() as u64, sizes.map_items);
                rate
            })
            .collect(),
    );

    // d. imap_unordered, chunk size 1 (median of rounds).
    let imap_rate = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                let n = pool
                    .with_chunksize(1)
                    .imap_unordered(square, 0..sizes.imap_items)
                    .unwrap()
                    .map(Result::unwrap)
                    .count();
                assert_eq!(n as u64, sizes.imap_items);
                sizes.imap_items as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    );

    // e. CPU-bound map: ~10 ms items, speedup over serial, beside rayon's.
    // The three are interleaved, round after round, and compared by their
    // medians, so a noisy moment does not land on one of them alone.
    let iters = calibrate_spin(Duration::from_millis(10));
    let items = vec![iters; sizes.cpu_items];
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (mut serial_t, mut pool_t, mut rayon_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CPU_ROUNDS {
        let t = Instant::now();
        let serial: Vec<u64> = items.iter().map(|&i| spin(i)).collect();
        serial_t.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let pooled = pool.map(spin, items.clone()).unwrap();
        pool_t.push(t.elapsed().as_secs_f64());
        assert_eq!(pooled, serial);
        let t = Instant::now();
        let par: Vec<u64> = rayon_pool.install(|| {
            use rayon::prelude::*;
            items.par_iter().map(|&i| spin(i)).collect()
        });
        rayon_t.push(t.elapsed().as_secs_f64());
        assert_eq!(par, serial);
    }
    let serial_s = median(serial_t);
    let (pool_s, rayon_s) = (median(pool_t), median(rayon_t));
    let (our_speedup, rayon_speedup) = (serial_s / pool_s, serial_s / rayon_s);

    // f. crash recovery: SIGKILL → the task's error → a replacement serving.
    let mut to_error = Vec::new();
    let mut to_ready = Vec::new();
    for k in 0..sizes.crashes {
        let marker =
            std::env::temp_dir().join(format!("procpool-bench-{}-{k}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let running = pool
            .apply_async(announce_and_sleep, (marker.display().to_string(), 60_000))
            .unwrap();
        let victim: u32 = loop {
            match std::fs::read_to_string(&marker)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                Some(pid) => break pid,
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        let _ = std::fs::remove_file(&marker);
        let before = pool.stats().workers_started;
        let t = Instant::now();
        // SAFETY: kill only sends a signal to our own worker.
        unsafe {
            libc::kill(victim as i32, libc::SIGKILL);
        }
        assert!(running.get().unwrap_err().is_worker_died());
        to_error.push(t.elapsed().as_secs_f64());
        // Both workers busy until the replacement serves.
        let a = pool.apply_async(square, 2).unwrap();
        let b = pool.apply_async(square, 3).unwrap();
        a.get().unwrap();
        b.get().unwrap();
        to_ready.push(t.elapsed().as_secs_f64());
        assert!(pool.stats().workers_started > before);
    }
    let (crash_error, crash_ready) = (median(to_error), median(to_ready));

    // g. memory: a fresh process's peak RSS over a long imap.
    let mem = Command::new(std::env::current_exe().unwrap())
        .args(["--mem-imap", &sizes.mem_items.to_string()])
        .output()
        .unwrap();
    let mem = String::from_utf8_lossy(&mem.stdout);
    let mut mem = mem.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    let (parent_kib, worker_kib) = (mem.next().unwrap(), mem.next().unwrap());
    drop(pool);

    // Python's Pool, same workloads, same run.
    let python = run_python(quick);
    let py = |k: &str| python.as_ref().and_then(|p| json_number(p, k));

    // h–j. The zygote start method against exec.
    let zygote_rows = zygote::rows(if quick { &zygote::QUICK } else { &zygote::FULL });

    let us = |s: f64| format!("{:.1} µs", s * 1e6);
    let ms = |s: f64| format!("{:.2} ms", s * 1e3);
    let rate = |r: f64| format!("{:.0}/s", r);
    let ratio = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.1}×"));
    rows.push(Row {
        name: "a. start-up, 2 workers + first result",
        ours: ms(startup),
        peer: py("startup_s").map_or("python3 absent".into(), ms),
        ratio: ratio(py("startup_s").map(|p| p / startup)),
        target: "≥ 20× faster than Python",
    });
    rows.push(Row {
        name: "b. apply p50 (vs raw pipe p50)",
        ours: us(apply_p50),
        peer: us(raw_p50),
        ratio: format!("{:.2}× the floor", apply_p50 / raw_p50),
        target: "≤ 1.5× the raw pipe",
    });
    rows.push(Row {
        name: "b. apply p99 (vs raw pipe p99)",
        ours: us(apply_p99),
        peer: us(raw_p99),
        ratio: format!("{:.2}× the floor", apply_p99 / raw_p99),
        target: "",
    });
    rows.push(Row {
        name: "b. apply p50 vs Python's Pool.apply",
        ours: us(apply_p50),
        peer: py("apply_p50_s").map_or("python3 absent".into(), us),
        ratio: ratio(py("apply_p50_s").map(|p| p / apply_p50)),
        target: "≥ 4× faster than Python",
    });
    rows.push(Row {
        name: "c. map x*x over 1M u64",
        ours: rate(map_rate),
        peer: py("map_items_per_s").map_or("python3 absent".into(), rate),
        ratio: ratio(py("map_items_per_s").map(|p| map_rate / p)),
        target: "≥ 4× Python",
    });
    rows.push(Row {
        name: "d. imap_unordered, chunk size 1",
        ours: rate(imap_rate),
        peer: py("imap_unordered_items_per_s").map_or("python3 absent".into(), rate),
        ratio: ratio(py("imap_unordered_items_per_s").map(|p| imap_rate / p)),
        target: "≥ 8× Python",
    });
    rows.push(Row {
        name: "e. CPU-bound map speedup (vs rayon's)",
        ours: format!("{our_speedup:.2}×"),
        peer: format!("{rayon_speedup:.2}× (rayon)"),
        // Serial time cancels out: this is rayon's time over ours.
        ratio: format!("{:.2} of rayon", rayon_s / pool_s),
        target: "≥ 0.95 of rayon",
    });
    rows.push(Row {
        name: "f. crash: SIGKILL → task error",
        ours: ms(crash_error),
        peer: String::new(),
        ratio: String::new(),
        target: "",
    });
    rows.push(Row {
        name: "f. crash: SIGKILL → replacement serving",
        ours: ms(crash_ready),
        peer: String::new(),
        ratio: String::new(),
        target: "< 3 ms",
    });
    rows.push(Row {
        name: "g. parent peak RSS, imap of 10M items",
        ours: format!("{:.1} MiB", parent_kib as f64 / 1024.0),
        peer: String::new(),
        ratio: String::new(),
        target: "< 64 MiB",
    });
    rows.push(Row {
        name: "g. one idle worker's RSS",
        ours: format!("{:.1} MiB", worker_kib as f64 / 1024.0),
        peer: String::new(),
        ratio: String::new(),
        target: "",
    });
    rows.extend(zygote_rows);

    println!("| workload | procpool | peer | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.ours, r.peer, r.ratio, r.target
        );
    }
    if quick {
        println!("\n(quick run: tiny sizes, a smoke test; the numbers mean nothing)");
    }
}

fn raw_round_trips(n: usize) -> Vec<f64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--raw-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    let mut frame = [0u8; 12];
    frame[..4].copy_from_slice(&8u32.to_le_bytes());
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 + 100 {
        frame[4..].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        to.write_all(&frame).unwrap();
        let mut back = [0u8; 12];
        from.read_exact(&mut back).unwrap();
        if i >= 100 {
            lat.push(t.elapsed().as_secs_f64());
        }
        assert_eq!(u64::from_le_bytes(back[4..].try_into().unwrap()), square(i));
    }
    drop(to);
    child.wait().unwrap();
    lat
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

fn run_python(quick: bool) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/python_pool.py");
    eprintln!("procpool-bench: measuring Python's multiprocessing.Pool (spawn)");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    if quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            eprintln!(
                "procpool-bench: the Python peer failed ({}); skipping it:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("procpool-bench: python3 is not available ({e}); skipping the Python peer");
            None
        }
    }
}

/// The number after `"key":` in a flat JSON object.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

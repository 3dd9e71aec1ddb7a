//! procpool beside its peers, in one run: Python's `multiprocessing.Pool`
//! (spawn), procspawn's `Pool` (`procspawn_peer.rs`), rayon (the in-process
//! ceiling) and a raw pipe round trip (the floor). Prints the machine, then
//! a table of medians and ratios, with the CPU time beside the wall time
//! (`cpu.rs`): crash recovery (`crash.rs`), the placement of caller and
//! worker (`placement.rs`), the zygote start method against exec
//! (`zygote.rs`), payloads of 4 KiB to 4 MiB (`payload.rs`), workers
//! through ssh on loopback against a raw ssh pipe (`remote.rs`); then every
//! Python peer (`python.rs`).
//! See `bench/README.md`.
//!
//! `cargo run --release -p procpool-bench [-- --quick]`

use std::process::Command;
use std::time::{Duration, Instant};

use procpool::{Pool, Registry};

mod cpu;
mod crash;
mod machine;
mod payload;
mod placement;
mod procspawn_peer;
mod python;
mod remote;
mod table;
mod zygote;

use table::{Row, median, square};

/// A deterministic busy loop: `iters` steps of integer work.
fn spin(iters: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..iters {
        acc = std::hint::black_box((acc.wrapping_mul(31).wrapping_add(i)) & 0xFFFF_FFFF);
    }
    acc
}

fn registry() -> Registry {
    let tasks = Registry::new()
        .task(square)
        .task(spin)
        .task(crash::announce_and_sleep);
    payload::register(zygote::register(tasks))
}

struct Sizes {
    startups: usize,
    applies: usize,
    /// Row b: procspawn calls (each costs several applies).
    procspawn_calls: usize,
    map_items: u64,
    imap_items: u64,
    /// Row d: Python's items per round (its rate is a thirtieth of ours).
    python_imap_items: u64,
    cpu_items: usize,
    crashes: usize,
    mem_items: u64,
    /// Row k: applies (and raw round trips) per placement and round.
    placement_applies: usize,
    placement_rounds: usize,
    /// Row k: procspawn calls per placement and round.
    placement_procspawn_calls: usize,
}

/// Row c: pairs of map rounds, ours and Python's in turns.
const MAP_PAIRS: usize = 7;
/// Row d: pairs of `imap_unordered` rounds, ours and Python's in turns.
const IMAP_PAIRS: usize = 5;
/// Interleaved rounds of the CPU-bound workload (this machine's speed
/// drifts by tens of percent within seconds).
const CPU_ROUNDS: usize = 5;

const FULL: Sizes = Sizes {
    startups: 20,
    applies: 20_000,
    procspawn_calls: 5_000,
    map_items: 1_000_000,
    imap_items: 200_000,
    python_imap_items: 30_000,
    cpu_items: 200,
    crashes: 20,
    mem_items: 10_000_000,
    placement_applies: 5_000,
    placement_rounds: 3,
    placement_procspawn_calls: 1_000,
};

const QUICK: Sizes = Sizes {
    startups: 3,
    applies: 300,
    procspawn_calls: 100,
    map_items: 20_000,
    imap_items: 2_000,
    python_imap_items: 1_000,
    cpu_items: 8,
    crashes: 3,
    mem_items: 100_000,
    placement_applies: 200,
    placement_rounds: 1,
    placement_procspawn_calls: 50,
};

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)]
}

fn main() {
    let tasks = registry();
    procpool::serve_if_worker(&tasks);
    // A procspawn child (this program started again by procspawn, with a
    // variable of its own) serves procspawn's calls here and exits; in
    // the harness and its own children this returns at once.
    procspawn::init();
    // SAFETY: every function the harness gives procspawn is in this
    // executable, none in a shared library, which is what procspawn's
    // check (the feature left out, see Cargo.toml) would have verified.
    unsafe { procspawn::assert_spawn_is_safe() };

    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--raw-echo") {
        table::raw_echo();
        return;
    }
    if args.iter().any(|a| a == "--raw-echo-frames") {
        payload::raw_echo_frames();
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

fn run(sizes: &Sizes, quick: bool) {
    println!("Machine: {}", machine::describe());
    println!();
    eprintln!(
        "procpool-bench: measuring procpool{}",
        if quick { " (quick)" } else { "" }
    );
    let mut rows = Vec::new();

    // Python's pool for rows a, c and d, their rounds taken in turns with ours
    // (who goes first alternates), seconds apart, so both meet the machine
    // at the same speed; the ratios are the medians of the pairs'. Without
    // python3, our rounds alone.
    let mut python_peer = python::TurnPeer::start(sizes.map_items);

    // a. start-up. CPU: whole pool lifetimes (build → drop, which joins
    // and reaps the workers), so the workers are in RUSAGE_CHILDREN.
    let mut cpu_a = cpu::Meter::default();
    let a = python::in_turns(
        sizes.startups,
        || {
            cpu_a.measure(&[], || {
                let t = Instant::now();
                let pool = Pool::builder().workers(2).build().unwrap();
                pool.apply(square, 3).unwrap();
                let dt = t.elapsed().as_secs_f64();
                drop(pool);
                dt
            })
        },
        || python_peer.as_mut().and_then(python::TurnPeer::startup),
        |ours, theirs| theirs / ours,
    );
    let startup = a.ours;

    let pool = Pool::builder().workers(2).build().unwrap();
    pool.apply(square, 1).unwrap();
    // Rows b–e: the workers live on; their CPU is read from /proc.
    let workers = pool.worker_pids();

    // b. apply round trips, and the raw pipe floor.
    let mut cpu_b = cpu::Meter::default();
    let lat: Vec<f64> = cpu_b.measure(&workers, || {
        (0..sizes.applies as u64)
            .map(|i| {
                let t = Instant::now();
                std::hint::black_box(pool.apply(square, i).unwrap());
                t.elapsed().as_secs_f64()
            })
            .collect()
    });
    let (apply_p50, apply_p99) = (median(lat.clone()), percentile(lat, 0.99));
    let raw = placement::raw_round_trips(sizes.applies, None);
    let (raw_p50, raw_p99) = (median(raw.clone()), percentile(raw, 0.99));
    // b. The same call through procspawn's pool of 2, dropped at once.
    let peer = procspawn_peer::pool(2);
    let spawned = procspawn_peer::round_trips(&peer, sizes.procspawn_calls);
    drop(peer);
    let (ps_p50, ps_p99) = (median(spawned.clone()), percentile(spawned, 0.99));

    // c. map of x*x, automatic chunk size: our rounds and Python's in
    // turns, as for row a.
    let mut cpu_c = cpu::Meter::default();
    let c = python::in_turns(
        MAP_PAIRS,
        || {
            cpu_c.measure(&workers, || {
                let t = Instant::now();
                let squares = pool.map(square, 0..sizes.map_items).unwrap();
                let rate = sizes.map_items as f64 / t.elapsed().as_secs_f64();
                assert_eq!(squares.len() as u64, sizes.map_items);
                rate
            })
        },
        || python_peer.as_mut().and_then(python::TurnPeer::round),
        |ours, theirs| ours / theirs,
    );
    let map_rate = c.ours;

    // d. imap_unordered, chunk size 1: our rounds and Python's in turns,
    // as for rows a and c (Python's over fewer items: a rate is compared).
    let mut cpu_d = cpu::Meter::default();
    let d = python::in_turns(
        IMAP_PAIRS,
        || {
            cpu_d.measure(&workers, || {
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
        },
        || {
            let items = sizes.python_imap_items;
            python_peer.as_mut().and_then(|p| p.imap(items))
        },
        |ours, theirs| ours / theirs,
    );
    drop(python_peer);
    let imap_rate = d.ours;

    // e. CPU-bound map: ~10 ms items, speedup over serial, beside rayon's.
    // The three are interleaved, round after round, and compared by their
    // medians, so a noisy moment does not land on one of them alone.
    let iters = calibrate_spin(Duration::from_millis(10));
    let items = vec![iters; sizes.cpu_items];
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut cpu_e = cpu::Meter::default();
    let (mut serial_t, mut pool_t, mut rayon_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CPU_ROUNDS {
        let t = Instant::now();
        let serial: Vec<u64> = items.iter().map(|&i| spin(i)).collect();
        serial_t.push(t.elapsed().as_secs_f64());
        let pooled = cpu_e.measure(&workers, || {
            let t = Instant::now();
            let pooled = pool.map(spin, items.clone()).unwrap();
            pool_t.push(t.elapsed().as_secs_f64());
            pooled
        });
        assert_eq!(pooled, serial);
        let t = Instant::now();
        let par: Vec<u64> = rayon_pool.install(|| {
            use rayon::prelude::*;
            items.par_iter().map(|&i| spin(i)).collect()
        });
        rayon_t.push(t.elapsed().as_secs_f64());
        assert_eq!(par, serial);
    }
    assert_eq!(pool.worker_pids(), workers, "no worker replaced in b–e");
    let serial_s = median(serial_t);
    let (pool_s, rayon_s) = (median(pool_t), median(rayon_t));
    let (our_speedup, rayon_speedup) = (serial_s / pool_s, serial_s / rayon_s);

    // f. crash recovery: SIGKILL → the task's error → a replacement serving.
    let (crash_error, crash_ready) = crash::measure(&pool, sizes.crashes);

    // g. memory: a fresh process's peak RSS over a long imap.
    let mem = Command::new(std::env::current_exe().unwrap())
        .args(["--mem-imap", &sizes.mem_items.to_string()])
        .output()
        .unwrap();
    let mem = String::from_utf8_lossy(&mem.stdout);
    let mut mem = mem.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    let (parent_kib, worker_kib) = (mem.next().unwrap(), mem.next().unwrap());
    drop(pool);

    // k. apply and the raw pipe, caller and worker on one CPU or two.
    let placed = placement::measure(
        sizes.placement_applies,
        sizes.placement_procspawn_calls,
        sizes.placement_rounds,
    );

    // l. Payloads of 4 KiB to 4 MiB: three byte types and the raw pipe.
    let payload_rows = payload::rows(if quick {
        &payload::QUICK
    } else {
        &payload::FULL
    });

    // m. Workers through ssh, against the raw ssh pipe and local workers.
    let remote_rows = remote::rows(if quick { &remote::QUICK } else { &remote::FULL });

    // Python's pools, same workloads, same run.
    let python = python::run(quick);
    let py = |k: &str| python.as_ref().and_then(|p| python::json_number(p, k));

    // h–j. The zygote start method against exec.
    let zygote_rows = zygote::rows(if quick { &zygote::QUICK } else { &zygote::FULL });

    let us = |s: f64| format!("{:.1} µs", s * 1e6);
    let ms = |s: f64| format!("{:.2} ms", s * 1e3);
    let rate = |r: f64| format!("{:.0}/s", r);
    let ratio = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.1}×"));
    let where_ = |k: usize| {
        if k == 0 {
            "caller and worker pinned to the same CPU"
        } else {
            "caller and worker pinned to different CPUs"
        }
    };
    let items_c = (MAP_PAIRS as u64 * sizes.map_items) as f64;
    let items_d = (IMAP_PAIRS as u64 * sizes.imap_items) as f64;
    rows.push(Row {
        name: "a. start-up, 2 workers + first result (vs Python's, spawn, runs in turns)".into(),
        ours: ms(startup),
        cpu: cpu_a.column(sizes.startups as f64, "start-up", 1e3, "ms"),
        peer: a.theirs.map_or("python3 absent".into(), ms),
        ratio: ratio(a.ratio),
        target: "≥ 40× faster than Python",
    });
    rows.push(Row {
        name: "b. apply p50 (vs raw pipe p50)".into(),
        ours: us(apply_p50),
        cpu: cpu_b.column(sizes.applies as f64, "call", 1e6, "µs"),
        peer: us(raw_p50),
        ratio: format!("{:.2}× the floor", apply_p50 / raw_p50),
        target: "≤ 1.5× the raw pipe",
    });
    rows.push(Row {
        name: "b. apply p99 (vs raw pipe p99)".into(),
        ours: us(apply_p99),
        peer: us(raw_p99),
        ratio: format!("{:.2}× the floor", apply_p99 / raw_p99),
        ..Row::default()
    });
    rows.push(Row {
        name: "b. apply p50 vs Python's Pool.apply".into(),
        ours: us(apply_p50),
        peer: py("apply_p50_s").map_or("python3 absent".into(), us),
        ratio: ratio(py("apply_p50_s").map(|p| p / apply_p50)),
        target: "≥ 10× faster than Python",
        ..Row::default()
    });
    rows.push(Row {
        name: "b. apply p50 vs procspawn's Pool call (spawn + join) p50".into(),
        ours: us(apply_p50),
        peer: us(ps_p50),
        ratio: format!("{:.1}× faster", ps_p50 / apply_p50),
        target: "≥ 5× faster than procspawn",
        ..Row::default()
    });
    rows.push(Row {
        name: "b. apply p99 vs procspawn's Pool call p99".into(),
        ours: us(apply_p99),
        peer: us(ps_p99),
        ratio: format!("{:.1}× faster", ps_p99 / apply_p99),
        ..Row::default()
    });
    rows.push(Row {
        name: "c. map x*x over 1M u64 (vs Python's Pool.map, spawn, rounds in turns)".into(),
        ours: rate(map_rate),
        cpu: cpu_c.column(items_c, "item", 1e9, "ns"),
        peer: c.theirs.map_or("python3 absent".into(), rate),
        ratio: ratio(c.ratio),
        target: "≥ 6× Python",
    });
    rows.push(Row {
        name: "d. imap_unordered, chunk size 1 (vs Python's, spawn, rounds in turns)".into(),
        ours: rate(imap_rate),
        cpu: cpu_d.column(items_d, "item", 1e9, "ns"),
        peer: d.theirs.map_or("python3 absent".into(), rate),
        ratio: ratio(d.ratio),
        target: "≥ 8× Python",
    });
    rows.push(Row {
        name: "e. CPU-bound map speedup (vs rayon's)".into(),
        ours: format!("{our_speedup:.2}×"),
        cpu: cpu_e.column(CPU_ROUNDS as f64, "run", 1e3, "ms"),
        peer: format!("{rayon_speedup:.2}× (rayon)"),
        // Serial time cancels out: this is rayon's time over ours.
        ratio: format!("{:.2} of rayon", rayon_s / pool_s),
        target: "≥ 0.97 of rayon",
    });
    rows.push(Row {
        name: "f. crash: SIGKILL → task error".into(),
        ours: ms(crash_error),
        ..Row::default()
    });
    rows.push(Row {
        name: "f. crash: SIGKILL → replacement serving (survivor busy)".into(),
        ours: ms(crash_ready),
        target: "< 3 ms",
        ..Row::default()
    });
    rows.push(Row {
        name: "g. parent peak RSS, imap of 10M items".into(),
        ours: format!("{:.1} MiB", parent_kib as f64 / 1024.0),
        target: "< 64 MiB",
        ..Row::default()
    });
    rows.push(Row {
        name: "g. one idle worker's RSS".into(),
        ours: format!("{:.1} MiB", worker_kib as f64 / 1024.0),
        ..Row::default()
    });
    rows.extend(zygote_rows);
    for (k, p) in placed.iter().enumerate() {
        rows.push(Row {
            name: format!("k. apply p50 (vs raw pipe p50), {}", where_(k)),
            ours: format!("{} (CPUs {}, {})", us(p.apply_p50), p.cpus.0, p.cpus.1),
            peer: us(p.pipe_p50),
            ratio: format!("{:.2}× the pipe", p.apply_p50 / p.pipe_p50),
            target: if k == 0 {
                "≤ 1.3× the pipe"
            } else {
                "≤ 0.5× the pipe"
            },
            ..Row::default()
        });
    }
    for (k, p) in placed.iter().enumerate() {
        rows.push(Row {
            name: format!("k. apply p50 vs procspawn's Pool call p50, {}", where_(k)),
            ours: us(p.apply_p50),
            peer: us(p.procspawn_p50),
            ratio: format!("{:.1}× faster", p.procspawn_p50 / p.apply_p50),
            target: "≥ 5× faster than procspawn",
            ..Row::default()
        });
    }
    let py_placed = [
        py("placed_same_apply_p50_s"),
        py("placed_different_apply_p50_s"),
    ];
    for (k, p) in placed.iter().enumerate() {
        let Some(theirs) = py_placed[k] else { continue };
        rows.push(Row {
            name: format!("k. apply p50 vs Python's Pool.apply p50, {}", where_(k)),
            ours: us(p.apply_p50),
            peer: us(theirs),
            ratio: format!("{:.1}× faster", theirs / p.apply_p50),
            target: "≥ 10× faster than Python",
            ..Row::default()
        });
    }
    if let [same, different] = &placed[..] {
        rows.push(Row {
            name: "k. different CPUs over the same CPU: apply (vs the raw pipe)".into(),
            ours: format!("{:.2}×", different.apply_p50 / same.apply_p50),
            peer: format!("{:.2}× (pipe)", different.pipe_p50 / same.pipe_p50),
            ..Row::default()
        });
    }
    rows.extend(payload_rows);
    rows.extend(remote_rows);

    table::print(rows);
    match &python {
        Some(json) => {
            println!(
                "\nPython {} peers (in brackets: procpool's advantage)\n",
                python::json_string(json, "python_version").unwrap_or_default()
            );
            let ours = python::Ours {
                startup_s: startup,
                apply_p50_s: apply_p50,
                map_items_per_s: map_rate,
                imap_items_per_s: imap_rate,
            };
            print!("{}", python::peers_table(json, &ours));
        }
        None => println!("\n(no Python peers: python3 absent or failed)"),
    }
    if quick {
        println!("\n(quick run: tiny sizes, a smoke test; the numbers mean nothing)");
    }
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

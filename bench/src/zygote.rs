//! The zygote start method against exec, in the same run (rows h–j): the
//! respawn of a worker whose initializer is slow, the memory of workers
//! sharing a table their initializer built, and the start-up of a pool.
//! Exec and zygote are measured round after round, alternately, since this
//! machine's speed drifts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use procpool::{Pool, Registry, StartMethod};

use crate::{Row, median, square};

/// A slow initializer: sleeps `ms`.
fn init_sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A trivial initializer: returns at once.
fn init_nothing() {}

/// This worker's pid, answered at once, or after `ms` of sleep by worker
/// `slow`: fed to a pool whose other worker was just killed, it keeps the
/// survivor busy, so an answer from a new pid is the replacement serving.
fn pid_unless_slow(slow: u32, ms: u64) -> u32 {
    let pid = std::process::id();
    if pid == slow {
        std::thread::sleep(Duration::from_millis(ms));
    }
    pid
}

/// A read-only table, the state a worker's initializer builds.
struct Table(Vec<u64>);

/// Entry `i` of every table: never zero, so every page is written.
fn entry(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// The state-making initializer: a table of `bytes` bytes.
fn make_table(bytes: u64) -> Table {
    Table((0..bytes / 8).map(entry).collect())
}

/// Entries [`probe_table`] reads, spread over the table.
const PROBES: u64 = 4096;

/// The `PROBES` indices [`probe_table`] reads in a table of `len` entries.
fn probe_indices(len: u64, seed: u64) -> impl Iterator<Item = u64> {
    let step = (len / PROBES).max(1);
    (0..PROBES).map(move |k| (k * step + seed) % len)
}

/// Reads entries spread over the worker's table: its pid and their sum.
fn probe_table(table: &Table, seed: u64) -> (u32, u64) {
    let t = &table.0;
    let sum = probe_indices(t.len() as u64, seed).fold(0u64, |s, i| s.wrapping_add(t[i as usize]));
    (std::process::id(), sum)
}

/// What [`probe_table`] must answer for a table of `bytes` bytes.
fn probe_sum(bytes: u64, seed: u64) -> u64 {
    probe_indices(bytes / 8, seed).fold(0u64, |s, i| s.wrapping_add(entry(i)))
}

/// Adds this module's tasks and initializers to `tasks`.
pub(crate) fn register(tasks: Registry) -> Registry {
    tasks
        .task(init_sleep)
        .task(init_nothing)
        .task(pid_unless_slow)
        .initializer(make_table)
        .task_with_state(probe_table)
}

pub(crate) struct Sizes {
    /// Kill → replacement serving, per start method.
    respawns: usize,
    /// The initializer's sleep in the respawn workload.
    respawn_init_ms: u64,
    /// Workers of the memory workload, and the table each one holds.
    mem_workers: usize,
    table_bytes: u64,
    /// Start-ups of a pool of `startup_workers`, per start method.
    startups: usize,
    startup_workers: usize,
}

pub(crate) const FULL: Sizes = Sizes {
    respawns: 5,
    respawn_init_ms: 500,
    mem_workers: 8,
    table_bytes: 200 << 20,
    startups: 10,
    startup_workers: 8,
};

pub(crate) const QUICK: Sizes = Sizes {
    respawns: 2,
    respawn_init_ms: 500,
    mem_workers: 2,
    table_bytes: 8 << 20,
    startups: 3,
    startup_workers: 8,
};

const METHODS: [StartMethod; 2] = [StartMethod::Exec, StartMethod::Zygote];

/// How long the survivor of a kill takes over each item it is given.
const SURVIVOR_MS: u64 = 20;

/// Measures rows h–j.
pub(crate) fn rows(sizes: &Sizes) -> Vec<Row> {
    eprintln!("procpool-bench: measuring the zygote start method against exec");
    let respawn = respawn(sizes);
    let (exec_kib, zygote_kib, zygote_own_kib) = memory(sizes);
    let startup = startup(sizes);

    let ms = |s: f64| format!("{:.2} ms", s * 1e3);
    let each = |xs: &[f64]| xs.iter().map(|&s| ms(s)).collect::<Vec<_>>().join(", ");
    for (row, times) in [("h", &respawn), ("j", &startup)] {
        for (method, xs) in METHODS.iter().zip(times) {
            eprintln!("procpool-bench: {row}. {method:?}, each run: {}", each(xs));
        }
    }
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let [exec_respawn, zygote_respawn] = respawn.map(median);
    let [exec_startup, zygote_startup] = startup.map(median);
    vec![
        Row {
            name: "h. zygote: 500 ms initializer, SIGKILL → replacement serving (vs exec)".into(),
            ours: ms(zygote_respawn),
            cpu: String::new(),
            peer: format!("{} (exec)", ms(exec_respawn)),
            ratio: format!("{:.0}× faster", exec_respawn / zygote_respawn),
            target: "≥ 50× faster than exec",
        },
        Row {
            name: "i. zygote: PSS of 8 workers sharing a 200 MiB table (vs exec)".into(),
            ours: mib(zygote_kib),
            cpu: String::new(),
            peer: format!("{} (exec)", mib(exec_kib)),
            ratio: format!("{:.2}× exec", zygote_kib as f64 / exec_kib as f64),
            target: "≤ 0.3× exec",
        },
        Row {
            name: "i. zygote: the zygote's own PSS (not in the row above)".into(),
            ours: mib(zygote_own_kib),
            cpu: String::new(),
            peer: String::new(),
            ratio: String::new(),
            target: "",
        },
        Row {
            name: "j. zygote: start-up, 8 workers, trivial initializer + first result (vs exec)"
                .into(),
            ours: ms(zygote_startup),
            cpu: String::new(),
            peer: format!("{} (exec)", ms(exec_startup)),
            ratio: format!("{:.2}× exec", zygote_startup / exec_startup),
            target: "≤ 1.5× exec",
        },
    ]
}

/// h. Per start method: the seconds from a worker's SIGKILL to its
/// replacement's first answer, with the other worker busy. One pool per
/// method, killed into alternately.
fn respawn(sizes: &Sizes) -> [Vec<f64>; 2] {
    let pools = METHODS.map(|method| {
        Pool::builder()
            .workers(2)
            .start_method(method)
            .initializer(init_sleep, sizes.respawn_init_ms)
            .build()
            .unwrap()
    });
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..sizes.respawns {
        for (m, pool) in pools.iter().enumerate() {
            times[m].push(kill_to_serving(pool, METHODS[m]));
        }
    }
    times
}

/// SIGKILL of one of `pool`'s two workers → the first answer from a new
/// pid, its survivor kept busy (every item it takes sleeps), so no idle
/// survivor answers in the replacement's place.
fn kill_to_serving(pool: &Pool, method: StartMethod) -> f64 {
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2, "{method:?}: {pids:?}");
    let (victim, survivor) = (pids[0], pids[1]);
    let before = pool.stats();
    let t = Instant::now();
    // SAFETY: kill only sends a signal to our own worker.
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    let elapsed = first_new_answer(pool, victim, survivor, t, &format!("{method:?}"));
    let after = pool.stats();
    assert_eq!(
        after.workers_started,
        before.workers_started + 1,
        "{method:?}"
    );
    let forked = u64::from(method == StartMethod::Zygote);
    assert_eq!(
        after.workers_forked,
        before.workers_forked + forked,
        "{method:?}"
    );
    settle(pool, victim, &format!("{method:?}"));
    elapsed
}

/// The seconds from `t` (a SIGKILL of `victim`) to the first answer
/// from a pid that is neither `victim` nor `survivor`: an
/// `imap_unordered` with chunk size 1 of [`pid_unless_slow`], every item
/// of which the survivor sleeps over, so it cannot answer in the
/// replacement's place.
pub(crate) fn first_new_answer(
    pool: &Pool,
    victim: u32,
    survivor: u32,
    t: Instant,
    what: &str,
) -> f64 {
    let answers = pool
        .with_chunksize(1)
        .imap_unordered(
            pid_unless_slow,
            (0..1_000_000).map(|_| (survivor, SURVIVOR_MS)),
        )
        .unwrap();
    for answer in answers {
        match answer {
            Ok(pid) if pid != victim && pid != survivor => return t.elapsed().as_secs_f64(),
            Ok(_) => {}
            // An item the victim had started before its death was seen.
            Err(e) if e.is_worker_died() => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: no replacement answered");
}

/// Waits until the pool has two workers again, `victim` not among them,
/// and the survivor is done with what was queued to it: the next kill
/// finds both workers serving.
pub(crate) fn settle(pool: &Pool, victim: u32, what: &str) {
    let settled = Instant::now();
    while pool.worker_pids().len() != 2 || pool.worker_pids().contains(&victim) {
        assert!(settled.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(4 * SURVIVOR_MS));
}

/// i. The total PSS of the workers, in KiB, for exec and zygote, each
/// worker holding a table its initializer built and having read it; and
/// the zygote's own PSS.
fn memory(sizes: &Sizes) -> (u64, u64, u64) {
    let [(exec, _), (zygote, zygote_own)] = METHODS.map(|method| {
        let pool = Pool::builder()
            .workers(sizes.mem_workers)
            .start_method(method)
            .worker_state(make_table, sizes.table_bytes)
            .build()
            .unwrap();
        let pids: HashSet<u32> = pool.worker_pids().into_iter().collect();
        assert_eq!(pids.len(), sizes.mem_workers, "{method:?}");
        let mut seen = HashSet::new();
        for _ in 0..10 {
            let seeds = 0..16 * sizes.mem_workers as u64;
            let answers = pool
                .with_chunksize(1)
                .map(probe_table, seeds.clone())
                .unwrap();
            for (seed, (pid, sum)) in seeds.zip(answers) {
                assert_eq!(sum, probe_sum(sizes.table_bytes, seed), "{method:?}");
                seen.insert(pid);
            }
            if seen == pids {
                break;
            }
        }
        assert_eq!(seen, pids, "{method:?}: every worker read its table");
        let stats = pool.stats();
        let forked = if method == StartMethod::Zygote {
            sizes.mem_workers as u64
        } else {
            0
        };
        assert_eq!(stats.workers_forked, forked, "{method:?}");
        let workers: u64 = pids.iter().map(|&p| pss_kib(p)).sum();
        let parents: HashSet<u32> = pids.iter().map(|&p| ppid(p)).collect();
        let zygote = match method {
            StartMethod::Zygote => {
                assert_eq!(parents.len(), 1, "one zygote: {parents:?}");
                let z = *parents.iter().next().unwrap();
                assert_ne!(z, std::process::id(), "forked workers");
                pss_kib(z)
            }
            _ => 0,
        };
        (workers, zygote)
    });
    (exec, zygote, zygote_own)
}

/// j. Per start method: the seconds to build a pool of
/// `startup_workers` with a trivial initializer and get a first result,
/// alternately (and each method first in every other round).
fn startup(sizes: &Sizes) -> [Vec<f64>; 2] {
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..sizes.startups {
        for k in 0..2 {
            let m = (round + k) % 2;
            let t = Instant::now();
            let pool = Pool::builder()
                .workers(sizes.startup_workers)
                .start_method(METHODS[m])
                .initializer(init_nothing, ())
                .build()
                .unwrap();
            assert_eq!(pool.apply(square, 3).unwrap(), 9);
            times[m].push(t.elapsed().as_secs_f64());
            let forked = pool.stats().workers_forked;
            assert_eq!(
                forked,
                (m * sizes.startup_workers) as u64,
                "{:?}",
                METHODS[m]
            );
            drop(pool);
        }
    }
    times
}

/// The `Pss:` of process `pid`, from `/proc/<pid>/smaps_rollup`, in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Pss:")?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap()
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

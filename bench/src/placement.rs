//! The raw pipe floor (rows b and k), and row k: the `apply` round trip,
//! the raw pipe round trip and procspawn's pool call, with the calling
//! thread and the worker (or the echo child, or procspawn's worker) pinned
//! to the same CPU, then to different CPUs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use procpool::Pool;

use crate::{median, procspawn_peer, square};

/// `n` round trips of one frame through the echo child (after 100 for
/// warm-up), in seconds; the child pinned to `child_cpu` if given.
pub(crate) fn raw_round_trips(n: usize, child_cpu: Option<usize>) -> Vec<f64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--raw-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(cpu) = child_cpu {
        set_affinity(child.id(), &cpu_set(&[cpu]));
    }
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

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes into the set; `cpu` came from
        // CPU_ISSET over 0..CPU_SETSIZE, so it is below the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pins `pid` (0: the calling thread) to `set`.
fn set_affinity(pid: u32, set: &libc::cpu_set_t) {
    // SAFETY: sched_setaffinity reads the set we pass; `pid` is this
    // thread (0) or a child of ours.
    let rc = unsafe {
        libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            set,
        )
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity({pid}): {}",
        std::io::Error::last_os_error()
    );
}

/// The calling thread's affinity.
fn this_thread_affinity() -> libc::cpu_set_t {
    // SAFETY: as in cpu_set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes the calling thread's set into ours.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity");
    set
}

/// The medians of one placement, in seconds.
pub(crate) struct Placed {
    /// The calling thread's CPU and the worker's (or echo child's).
    pub(crate) cpus: (usize, usize),
    pub(crate) apply_p50: f64,
    pub(crate) pipe_p50: f64,
    pub(crate) procspawn_p50: f64,
}

/// Row k: per placement, same CPU then different CPUs (the latter only
/// with two CPUs allowed), `rounds` rounds alternating the placements,
/// each doing `n` applies on a pool of one worker, `n` raw round trips and
/// `calls` calls on a procspawn pool of one worker. The calling thread's
/// affinity is restored after.
pub(crate) fn measure(n: usize, calls: usize, rounds: usize) -> Vec<Placed> {
    let original = this_thread_affinity();
    // SAFETY: CPU_ISSET reads the set; every index is below CPU_SETSIZE.
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &original) })
        .collect();
    let mut placements = vec![(allowed[0], allowed[0])];
    if allowed.len() > 1 {
        placements.push((allowed[0], allowed[1]));
    }
    // Built before the caller is pinned: the pool's own threads inherit
    // the creating thread's affinity and stay free to run anywhere.
    let pool = Pool::builder().workers(1).build().unwrap();
    pool.apply(square, 1).unwrap();
    let worker = pool.worker_pids()[0];
    // Likewise: its monitor thread, which talks to its worker, stays free.
    let peer = procspawn_peer::pool(1);
    let peer_worker = procspawn_peer::worker_pid(&peer);
    let mut applies = vec![Vec::new(); placements.len()];
    let mut pipes = vec![Vec::new(); placements.len()];
    let mut spawned = vec![Vec::new(); placements.len()];
    for _ in 0..rounds {
        for (k, &(caller, other)) in placements.iter().enumerate() {
            set_affinity(worker, &cpu_set(&[other]));
            set_affinity(0, &cpu_set(&[caller]));
            for i in 0..100 {
                pool.apply(square, i).unwrap();
            }
            applies[k].extend((0..n as u64).map(|i| {
                let t = Instant::now();
                std::hint::black_box(pool.apply(square, i).unwrap());
                t.elapsed().as_secs_f64()
            }));
            pipes[k].extend(raw_round_trips(n, Some(other)));
            set_affinity(peer_worker, &cpu_set(&[other]));
            spawned[k].extend(procspawn_peer::round_trips(&peer, calls));
            set_affinity(0, &original);
        }
    }
    assert_eq!(
        pool.worker_pids(),
        vec![worker],
        "the worker was not replaced"
    );
    assert_eq!(
        procspawn_peer::worker_pid(&peer),
        peer_worker,
        "procspawn's worker was not replaced"
    );
    drop(pool);
    drop(peer);
    placements
        .into_iter()
        .zip(applies.into_iter().zip(pipes).zip(spawned))
        .map(|(cpus, ((a, p), s))| Placed {
            cpus,
            apply_p50: median(a),
            pipe_p50: median(p),
            procspawn_p50: median(s),
        })
        .collect()
}

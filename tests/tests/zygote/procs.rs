//! What the zygote's review scenarios look at from outside: processes
//! found by a marker argument their pool passes to every worker (and so
//! to the zygote), and their `/proc` entries.

use procpool_tests::{process_state, wait_until};

use crate::{LIMIT, builder};

pub(crate) fn marker(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "zy-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn marked(n: usize, marker: &str) -> procpool::Builder {
    builder(n).worker_args(["--review-marker", marker])
}

pub(crate) fn proc_bytes(pid: u32, file: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

pub(crate) fn has_field(pid: u32, file: &str, needle: &str) -> bool {
    proc_bytes(pid, file)
        .split(|&b| b == 0)
        .any(|f| f == needle.as_bytes())
}

pub(crate) fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .map(|i| {
            stat[i + 1..]
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn ppid_of(pid: u32) -> Option<u32> {
    stat_fields(pid).get(1)?.parse().ok()
}

pub(crate) fn pgid_of(pid: u32) -> Option<u32> {
    stat_fields(pid).get(2)?.parse().ok()
}

pub(crate) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .collect()
}

pub(crate) fn marked_processes(marker: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| has_field(p, "cmdline", marker))
        .collect()
}

pub(crate) fn zygotes(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    marked_processes(marker)
        .into_iter()
        .filter(|&p| ppid_of(p) == Some(me) && has_field(p, "environ", "PROCPOOL_ZYGOTE=1"))
        .collect()
}

pub(crate) fn the_zygote(marker: &str) -> u32 {
    let mut found = Vec::new();
    assert!(
        wait_until(LIMIT, || {
            found = zygotes(marker);
            found.len() == 1
        }),
        "one zygote: {found:?}"
    );
    found[0]
}

pub(crate) fn zombies_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| ppid_of(p) == Some(parent) && process_state(p) == Some('Z'))
        .collect()
}

pub(crate) fn try_kill(pid: u32) {
    // SAFETY: kill only sends a signal; the pids are this test's own.
    let _ = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// In a child scenario: a pool of two fault workers, started the way the
/// environment variable `method_var` says (`zygote`, or else exec), both
/// busy in minute-long tasks; its workers' pids.
pub(crate) fn busy_pool(method_var: &str) -> (procpool::Pool, Vec<u32>) {
    let method = match std::env::var(method_var).unwrap().as_str() {
        "zygote" => procpool::StartMethod::Zygote,
        _ => procpool::StartMethod::Exec,
    };
    let pool = procpool::Pool::builder()
        .workers(2)
        .worker_program(crate::FAULT_WORKER)
        .start_method(method)
        .build()
        .unwrap();
    for _ in 0..2 {
        // Detached: they run until the pool's process ends.
        drop(pool.apply_async(procpool_tests::sleep_ms, 60_000).unwrap());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pids = pool.worker_pids();
    (pool, pids)
}

/// Spawns `command()` again and again, naming `pid` as the next pid
/// through `/proc/sys/kernel/ns_last_pid`, until the kernel gives it that
/// freed pid: that child, or `None` after `tries`. Misses are SIGKILLed
/// and reaped.
pub(crate) fn spawn_at_pid(
    pid: u32,
    tries: usize,
    command: impl Fn() -> std::process::Command,
) -> Option<std::process::Child> {
    use std::io::Write;
    for _ in 0..tries {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/ns_last_pid")
            .unwrap();
        write!(f, "{}", pid - 1).unwrap();
        drop(f);
        let mut child = command().spawn().unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

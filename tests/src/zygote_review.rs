//! Initializers of the hostile review of the zygote start method
//! (`tests/zygote/review.rs`): what a real initializer may do to the
//! process it runs in.

use std::time::Duration;

/// Starts `sleep 1000` (a helper daemon of the initializer), writes its pid
/// to `pidfile` and forgets the handle: the helper belongs to the process
/// that ran the initializer.
pub fn init_spawn_child(pidfile: String) {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    // Appended: with exec'd workers every worker runs the initializer.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&pidfile)
        .expect("open the pidfile");
    writeln!(f, "{}", child.id()).expect("write the pidfile");
    std::mem::forget(child);
}

/// Starts `n` threads one after the other, each joined before the next:
/// when it returns, the process has one thread again.
pub fn init_join_threads(n: u64) {
    for i in 0..n {
        std::thread::Builder::new()
            .name(format!("init-helper-{i}"))
            .spawn(move || {
                let v: Vec<u64> = (0..1000).map(|x| x * i).collect();
                std::hint::black_box(v);
            })
            .expect("start a helper thread")
            .join()
            .expect("join the helper thread");
    }
}

/// Sets SIGCHLD to SIG_IGN in the process that runs it (as a library that
/// does not want to reap its helpers would).
pub fn init_ignore_sigchld(_: u64) {
    // SAFETY: changes this process's disposition of SIGCHLD only.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
}

/// Takes 1 GiB and sleeps 5 s if `path` exists and this process is a
/// zygote: a slow initializer, for the second zygote only (the test creates the file
/// after the pool is built; exec'd workers stay quick).
pub fn init_sleep_if_exists(path: String) {
    let zygote = std::fs::read("/proc/self/environ")
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|v| v == b"PROCPOOL_ZYGOTE=1");
    if zygote && std::path::Path::new(&path).exists() {
        // A large state too: such a zygote takes a while to die.
        init_ballast_mib(1024);
        std::thread::sleep(Duration::from_secs(5));
    }
}

static BALLAST: parking_lot::Mutex<Vec<u8>> = parking_lot::Mutex::new(Vec::new());

/// Allocates and touches `mib` MiB, kept for the life of the process (an
/// initializer that loads a large model).
pub fn init_ballast_mib(mib: u64) {
    let mut v = vec![0u8; (mib as usize) << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    *BALLAST.lock() = v;
}

/// How many bytes [`init_ballast_mib`] holds in this worker.
pub fn ballast_len() -> u64 {
    BALLAST.lock().len() as u64
}

/// Starts `sleep 1000` in this worker's process group, forgets it, and
/// returns its pid: a task's helper that the worker's death orphans.
#[allow(
    clippy::zombie_processes,
    reason = "never waited for on purpose: the pool must kill it with the worker's group"
)]
pub fn spawn_sleeper() -> u32 {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    child.id()
}

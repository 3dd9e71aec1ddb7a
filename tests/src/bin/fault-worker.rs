//! A worker that serves the fault-injecting tasks of `procpool-tests`.
//!
//! `fault-worker [--crash-at start|handshake --death D --counter FILE
//! --skip N --times M]`: each start appends a byte to FILE; starts number
//! N+1 to N+M die (D: `exit:CODE`, `abort`, `segv`, `kill`) before the
//! handshake (`start`) or after writing the preamble only (`handshake`).
//!
//! `--stderr FILE`: the worker's stderr (and so its tasks' stdout, which
//! the runtime points at stderr) is appended to FILE instead of the
//! inherited one, so a test of noisy tasks can read what they printed
//! rather than spill it on the terminal.

use std::io::Write;
use std::os::fd::AsRawFd;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(path) = arg("--stderr") {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .expect("open the --stderr file");
        // SAFETY: dup2 onto fd 2 only replaces this process's stderr; no
        // thread runs yet and nothing holds fd 2 as an owned descriptor.
        let rc = unsafe { libc::dup2(file.as_raw_fd(), 2) };
        assert_eq!(rc, 2, "dup2 onto stderr failed");
        // Closed before the worker runtime sets up its descriptors.
        drop(file);
    }
    if let Some(phase) = arg("--crash-at") {
        let death = procpool_tests::Death::parse(&arg("--death").expect("--death"))
            .expect("a death: exit:N, abort, segv or kill");
        let counter = arg("--counter").expect("--counter");
        let skip: u64 = arg("--skip").map_or(0, |s| s.parse().expect("--skip N"));
        let times: u64 = arg("--times").map_or(u64::MAX, |s| s.parse().expect("--times M"));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&counter)
            .expect("open the counter");
        f.write_all(b"x").expect("count this start");
        let n = f.metadata().expect("stat the counter").len();
        if n > skip && n - skip <= times {
            if phase == "handshake" {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&procpool_protocol::preamble());
                let _ = out.flush();
            }
            death.die();
        }
    }
    procpool::worker::run(&procpool_tests::registry());
}

//! Review 2: `descendant_pidfds`' parent re-check (ede1905) drops every
//! descendant whose parent died between the walk and the re-check: a
//! grandchild re-parented to the (subreaper) worker in that window has a
//! new parent, is skipped, and outlives the kill.
//!
//! The worker's child `C` (its own session, so the group kill misses it)
//! has 64 children `G`, and exits shortly after it sees the worker
//! stopped: the pool's `kill()` sends SIGSTOP, then walks the tree. This
//! test process is a subreaper, so escaped `G`s come to it and are
//! cleaned up here.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{process_state, temp_path, tree_then_violate, wait_until, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

fn alive(pid: u32) -> bool {
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn descendants_survive_when_their_parent_exits_during_the_walk() {
    let _w = watchdog(
        "descendants_survive_when_their_parent_exits_during_the_walk",
        Duration::from_secs(240),
    );
    // SAFETY: makes this test process a child subreaper; no memory touched.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    let me = std::process::id();
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    let mut escaped_runs = 0;
    let mut escaped_total = 0;
    let runs = 10;
    for run in 0..runs {
        let pidfile = temp_path("tree");
        let e = pool
            .apply_async(tree_then_violate, (64u32, pidfile.display().to_string()))
            .unwrap()
            .get()
            .unwrap_err();
        assert!(
            e.to_string().contains("protocol") || e.is_worker_died(),
            "{e}"
        );
        let pids: Vec<u32> = std::fs::read_to_string(&pidfile)
            .expect("pidfile")
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let _ = std::fs::remove_file(&pidfile);
        // The pool killed and reaped the worker before it answered; give
        // killed processes a moment to disappear.
        let gs = &pids[1..];
        wait_until(Duration::from_secs(20), || gs.iter().all(|&g| !alive(g)));
        let escaped: Vec<u32> = gs.iter().copied().filter(|&g| alive(g)).collect();
        eprintln!(
            "run {run}: {} of {} grandchildren outlived the kill",
            escaped.len(),
            gs.len()
        );
        if !escaped.is_empty() {
            escaped_runs += 1;
            escaped_total += escaped.len();
        }
        // Clean up: only processes re-parented to this (subreaper) process.
        for g in escaped {
            if parent_of(g) == Some(me) {
                // SAFETY: g is our own child (we are its subreaper).
                unsafe {
                    libc::kill(g as i32, libc::SIGKILL);
                }
            }
        }
        // Reap whatever came to us (the dead C, killed Gs), but not the
        // pool's workers: only the pids of this tree.
        for &p in &pids {
            if parent_of(p) == Some(me) {
                wait_until(Duration::from_secs(2), || process_state(p) == Some('Z'));
                // SAFETY: waitpid on one pid of our own tree, with a null
                // status pointer (allowed); it reaps a zombie.
                unsafe {
                    libc::waitpid(p as i32, std::ptr::null_mut(), 0);
                }
            }
        }
    }
    pool.terminate();
    assert_eq!(
        escaped_runs, 0,
        "in {escaped_runs} of {runs} runs, {escaped_total} grandchildren outlived the worker's kill"
    );
}

//! Row f: crash recovery. SIGKILL of the worker running a task → that
//! task's error → a replacement serving, the survivor kept busy (as row h
//! does it, `zygote.rs`), so an idle survivor cannot answer in the
//! replacement's place.

use std::time::{Duration, Instant};

use procpool::Pool;

use crate::median;
use crate::zygote::{first_new_answer, settle};

/// Writes its worker's pid to `path`, then sleeps: a task whose start is
/// visible.
pub(crate) fn announce_and_sleep(path: String, ms: u64) -> u64 {
    std::fs::write(&path, std::process::id().to_string()).expect("marker");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// `crashes` kills into `pool` (2 workers): the medians of the seconds
/// from the SIGKILL to the task's error, and to the first answer from a
/// worker that is neither the victim nor the survivor.
pub(crate) fn measure(pool: &Pool, crashes: usize) -> (f64, f64) {
    let mut to_error = Vec::new();
    let mut to_ready = Vec::new();
    for k in 0..crashes {
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
        let pids = pool.worker_pids();
        assert_eq!(pids.len(), 2, "{pids:?}");
        assert!(pids.contains(&victim), "{victim} in {pids:?}");
        let survivor = *pids.iter().find(|&&p| p != victim).unwrap();
        let before = pool.stats().workers_started;
        let t = Instant::now();
        // SAFETY: kill only sends a signal to our own worker.
        unsafe {
            libc::kill(victim as i32, libc::SIGKILL);
        }
        assert!(running.get().unwrap_err().is_worker_died());
        to_error.push(t.elapsed().as_secs_f64());
        to_ready.push(first_new_answer(pool, victim, survivor, t, "row f"));
        assert_eq!(pool.stats().workers_started, before + 1);
        settle(pool, victim, "row f");
    }
    (median(to_error), median(to_ready))
}

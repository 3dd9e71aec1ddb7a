//! A hostile review of remote workers: kills and cancels that must reach
//! a relay whatever is queued for its worker, pools whose remote sites
//! have no worker, and what is left on the "host" afterwards. Every test
//! runs through the stand-in launcher (`sh -c 'exec "$@"'`).

use std::time::Duration;

use procpool::{Launcher, Pool};
use procpool_tests::{
    Then, announce_and_sleep, exit_with, init_fail, log_lines, not_running, pid, square, temp_path,
    wait_until, watchdog, wire_write,
};

use crate::common::{FAULT_WORKER, LIMIT};
use crate::launcher::{HOST_VAR, relays, remote_pool, stand_in};

/// Asserts that nothing of stand-in host `name` runs any more, and that
/// `workers` (pids there) have ended.
fn assert_host_clean(name: &str, workers: &[u32]) {
    assert!(
        wait_until(LIMIT, || relays(name).is_empty()),
        "relays of {name} still run: {:?}",
        relays(name)
    );
    for &w in workers {
        assert!(
            wait_until(LIMIT, || not_running(w)),
            "worker {w} on {name} still runs"
        );
    }
}

/// A frame header claiming `len` bytes, and `body` of them.
fn frame_head(len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn a_remote_worker_that_claims_an_oversized_frame_is_a_protocol_error() {
    let _w = watchdog(
        "a_remote_worker_that_claims_an_oversized_frame_is_a_protocol_error",
        LIMIT,
    );
    let pool = remote_pool("rv-oversized", 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    // A header over the pool's frame limit, then nothing: a local worker
    // doing this is refused at once; behind a relay it must be too, not
    // held back while the task waits for ever.
    let err = pool
        .apply(wire_write, (frame_head(u32::MAX >> 1, &[]), Then::Hang))
        .unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    pool.close();
    pool.join();
    assert_host_clean("rv-oversized", &[worker]);
}

#[test]
fn a_remote_worker_that_stalls_mid_frame_is_a_protocol_error() {
    let _w = watchdog(
        "a_remote_worker_that_stalls_mid_frame_is_a_protocol_error",
        LIMIT,
    );
    let pool = remote_pool("rv-stalled", 1)
        .stall_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    // Three bytes of a hundred-byte frame, then nothing.
    let err = pool
        .apply(wire_write, (frame_head(100, &[2, 0, 0]), Then::Hang))
        .unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert!(err.to_string().contains("stalled"), "{err}");
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    pool.close();
    pool.join();
    assert_host_clean("rv-stalled", &[worker]);
}

#[test]
fn a_pool_whose_only_remote_site_has_no_worker_is_refused() {
    let _w = watchdog(
        "a_pool_whose_only_remote_site_has_no_worker_is_refused",
        LIMIT,
    );
    let err = Pool::builder()
        .worker_program(FAULT_WORKER)
        .remote(stand_in("rv-empty").workers(0))
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("at least one worker"), "{err}");
}

/// Starts a task that sleeps for ten minutes on `pool` (`timeout`: its
/// deadline) and returns once it runs.
fn hang(pool: &Pool, timeout: Option<Duration>) -> procpool::AsyncResult<u64> {
    let marker = temp_path("rv-hang");
    let call = match timeout {
        Some(t) => pool.with_timeout(t),
        None => pool.with_chunksize(1),
    };
    let handle = call
        .apply_async(announce_and_sleep, (marker.display().to_string(), 600_000))
        .unwrap();
    assert!(wait_until(LIMIT, || marker.exists()), "the task never ran");
    let _ = std::fs::remove_file(marker);
    handle
}

#[test]
fn a_deadline_on_a_stopped_relay_kills_its_launcher_after_the_slack() {
    let _w = watchdog(
        "a_deadline_on_a_stopped_relay_kills_its_launcher_after_the_slack",
        LIMIT,
    );
    let pool = remote_pool("rv-stopped-deadline", 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let hung = hang(&pool, Some(Duration::from_millis(500)));
    let relay = relays("rv-stopped-deadline");
    assert_eq!(relay.len(), 1);
    // The relay stops answering: its Kill frame goes unread.
    procpool_tests::kill(relay[0], libc::SIGSTOP);
    let queued = pool.apply_async(square, 6).unwrap();
    let err = hung.get().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Its launcher is killed after the grace and the slack; the item
    // queued behind runs on the replacement, once.
    assert_eq!(queued.get().unwrap(), 36);
    assert_ne!(pool.apply(pid, ()).unwrap(), worker);
    pool.close();
    pool.join();
    assert_host_clean("rv-stopped-deadline", &[worker, relay[0]]);
}

#[test]
fn a_cancel_on_a_stopped_relay_ends_the_task_after_the_slack() {
    let _w = watchdog(
        "a_cancel_on_a_stopped_relay_ends_the_task_after_the_slack",
        LIMIT,
    );
    let pool = remote_pool("rv-stopped-cancel", 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let hung = hang(&pool, None);
    let relay = relays("rv-stopped-cancel");
    assert_eq!(relay.len(), 1);
    procpool_tests::kill(relay[0], libc::SIGSTOP);
    let queued = pool.apply_async(square, 7).unwrap();
    // The relay never reads the Cancel frame: the pool must not wait for
    // it for ever, as it does not at a deadline.
    hung.cancel();
    let err = hung.get().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(queued.get().unwrap(), 49);
    pool.close();
    pool.join();
    assert_host_clean("rv-stopped-cancel", &[worker, relay[0]]);
}

#[test]
fn a_start_up_error_on_a_host_names_what_failed_there() {
    let _w = watchdog("a_start_up_error_on_a_host_names_what_failed_there", LIMIT);
    let err = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(
            stand_in("rv-elsewhere")
                .program("/nonexistent/procpool/worker")
                .workers(1),
        )
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(err.is_startup(), "{text}");
    assert!(text.contains("rv-elsewhere"), "{text}");
    // The path that failed is the host's, not this host's.
    assert!(text.contains("/nonexistent/procpool/worker"), "{text}");
    // A launcher that cannot start is named, not the program.
    let err = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(
            Launcher::command(["/nonexistent/procpool/launcher", "--"])
                .name("rv-no-launcher")
                .workers(1),
        )
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(err.is_startup(), "{text}");
    assert!(text.contains("rv-no-launcher"), "{text}");
    assert!(text.contains("/nonexistent/procpool/launcher"), "{text}");
}

/// A launcher that outlives the relay it ran: a wrapper that does
/// something of its own after its command (here, sleeps ten minutes),
/// holding the pool's pipes open meanwhile.
fn lingering(name: &str) -> Launcher {
    Launcher::command([
        "env".to_owned(),
        format!("{HOST_VAR}={name}"),
        "sh".to_owned(),
        "-c".to_owned(),
        "\"$@\"; sleep 600".to_owned(),
        "stand-in".to_owned(),
    ])
    .name(name)
}

#[test]
fn a_relay_report_ends_its_worker_even_if_the_launcher_lingers() {
    let _w = watchdog(
        "a_relay_report_ends_its_worker_even_if_the_launcher_lingers",
        LIMIT,
    );
    let pool = Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(lingering("rv-lingering").workers(1))
        .build()
        .unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    // The relay reports the worker's death and exits; its launcher does
    // not: it is ended when the slack after the report is over, and the
    // report settles the task.
    let err = pool.apply(exit_with, 3).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(procpool::Exit::Code(3)), "{err}");
    assert_eq!(err.host(), Some("rv-lingering"), "{err}");
    // A replacement serves.
    assert_eq!(pool.apply(square, 8).unwrap(), 64);
    assert_ne!(pool.apply(pid, ()).unwrap(), worker);
    pool.close();
    pool.join();
    assert_host_clean("rv-lingering", &[worker]);
}

#[test]
fn an_initializer_that_fails_on_a_host_names_the_host() {
    let _w = watchdog("an_initializer_that_fails_on_a_host_names_the_host", LIMIT);
    let err = remote_pool("rv-init-fails", 2)
        .initializer(init_fail, "no data on this host".to_owned())
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(err.is_startup(), "{text}");
    assert!(text.contains("no data on this host"), "{text}");
    // Which host: with several, the one whose workers cannot start.
    assert!(text.contains("rv-init-fails"), "{text}");
    assert_host_clean("rv-init-fails", &[]);
}

#[test]
fn a_protocol_error_on_a_host_names_the_host() {
    let _w = watchdog("a_protocol_error_on_a_host_names_the_host", LIMIT);
    let pool = remote_pool("rv-protocol", 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    // A frame no decoder takes: a zero-length body.
    let err = pool
        .apply(wire_write, (frame_head(0, &[]), Then::Hang))
        .unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert_eq!(err.worker_pid(), Some(worker), "{err}");
    assert!(err.to_string().contains("rv-protocol"), "{err}");
    assert_eq!(err.host(), Some("rv-protocol"), "{err}");
    pool.close();
    pool.join();
    assert_host_clean("rv-protocol", &[worker]);
}

/// Records what this test process logs (installed once, at `Warn`).
struct Capture(std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

#[test]
fn a_remote_workers_log_records_name_its_pid_there_and_its_host() {
    let _w = watchdog(
        "a_remote_workers_log_records_name_its_pid_there_and_its_host",
        LIMIT,
    );
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
    let pool = remote_pool("rv-logs", 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    assert_eq!(
        pool.apply(log_lines, ("rv-tag-51c2".to_owned(), 2))
            .unwrap(),
        2
    );
    let ours: Vec<String> = CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("rv-tag-51c2"))
        .cloned()
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    for (i, message) in ours.iter().enumerate() {
        assert_eq!(
            message,
            &format!(
                "[worker {worker} on rv-logs `procpool_tests::log_lines`] rv-tag-51c2 line {i}"
            )
        );
    }
}

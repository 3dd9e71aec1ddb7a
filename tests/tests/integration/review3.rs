//! Third review of the zygote work, for everyone else: what protocol
//! version 4 (`ToWorker::Fork`/`Reap`, `FromWorker::Forked`/`NotForked`/
//! `Reaped`) changed for pools that never fork.
//!
//! - an exec'd worker sent a zygote's request (`Fork`, `Reap`) exits as on
//!   any malformed parent message, and runs nothing sent after it;
//! - a worker that writes a zygote's answer to the pool is a protocol
//!   violation (on the dispatcher's path and on the direct lane), its
//!   caller gets a protocol error and the pool goes on.
//!
//! This file is also compiled into the `zygote` binary, where `builder`
//! forks the workers; the raw-worker scenarios are exec'd there too.

use std::io::Read;
use std::process::Stdio;

use procpool_protocol::frame::read_frame;
use procpool_protocol::{
    DEFAULT_MAX_FRAME, ExitReport, FromWorker, ItemsBuilder, NotForked, Outcome, ToWorker,
    decode_from_worker, encode_init, encode_message, encode_run, exit_code, preamble,
};
use procpool_tests::{Then, recorded, square, temp_path, watchdog, wire_write};

use crate::raw_worker::RawWorker;
use crate::{FAULT_WORKER, LIMIT};

/// What these tests add to `wire`'s raw worker.
impl RawWorker {
    /// A raw worker whose stderr the test reads.
    fn start_capturing() -> Self {
        Self::start_with(Stdio::piped())
    }

    /// Runs `init_store(path)` and checks it succeeded.
    fn init_store(&mut self, path: &str) {
        let mut init = Vec::new();
        encode_init(
            &mut init,
            self.task("procpool_tests::init_store"),
            &postcard::to_stdvec(&path).unwrap(),
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        self.send(&init);
        let mut body = Vec::new();
        let out = self.child.stdout.as_mut().unwrap();
        assert!(read_frame(out, DEFAULT_MAX_FRAME, &mut body).unwrap());
        assert!(matches!(
            decode_from_worker(&body).unwrap(),
            FromWorker::InitDone(Outcome::Ok(_))
        ));
    }

    /// Waits (bounded by the watchdog) for the exit code; with what it
    /// wrote to stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.child.stdin.take());
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        (self.child.wait().unwrap().code(), err)
    }
}

/// A `Run` of `record` over ids 0, 1, 2.
fn record_run(w: &RawWorker) -> Vec<u8> {
    let mut items = ItemsBuilder::new();
    for id in 0..3u64 {
        items.push(&postcard::to_stdvec(&id).unwrap());
    }
    let mut run = Vec::new();
    encode_run(
        &mut run,
        0,
        w.task("procpool_tests::record"),
        false,
        &items,
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    run
}

/// An exec'd worker, initialized, is sent `msg` followed (in the same
/// write) by a valid batch of `record`: it must exit with
/// `BAD_PARENT_MESSAGE`, name the zygote request on stderr, and record
/// nothing (and fork nothing: its only child would be a worker).
fn refuses_zygote_request(name: &str, msg: &ToWorker<'_>) {
    let _w = watchdog(name, LIMIT);
    let file = temp_path(name);
    let mut w = RawWorker::start_capturing();
    w.send(&preamble());
    w.init_store(&file.display().to_string());
    let mut bytes = Vec::new();
    encode_message(&mut bytes, msg, DEFAULT_MAX_FRAME).unwrap();
    bytes.extend_from_slice(&record_run(&w));
    w.send(&bytes);
    let pid = w.child.id();
    let (code, err) = w.finish();
    assert_eq!(code, Some(exit_code::BAD_PARENT_MESSAGE), "{name}: {err}");
    assert!(err.contains("meant for a zygote"), "{name}: {err}");
    assert!(err.contains(&pid.to_string()), "{name}: {err}");
    assert!(
        recorded(&file).is_empty(),
        "{name}: items ran: {:?}",
        recorded(&file)
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn review3_an_execd_worker_refuses_a_fork_request_and_runs_nothing_after_it() {
    refuses_zygote_request(
        "review3_an_execd_worker_refuses_a_fork_request_and_runs_nothing_after_it",
        &ToWorker::Fork { index: 0 },
    );
}

#[test]
fn review3_an_execd_worker_refuses_a_reap_request_and_runs_nothing_after_it() {
    // The pid of this test process: a worker that obeyed would try to
    // reap a process that is not its child.
    refuses_zygote_request(
        "review3_an_execd_worker_refuses_a_reap_request_and_runs_nothing_after_it",
        &ToWorker::Reap {
            pid: std::process::id(),
        },
    );
}

#[test]
fn review3_a_fork_request_before_the_initializer_is_refused_too() {
    let _w = watchdog(
        "review3_a_fork_request_before_the_initializer_is_refused_too",
        LIMIT,
    );
    let mut w = RawWorker::start_capturing();
    w.send(&preamble());
    let mut bytes = Vec::new();
    encode_message(&mut bytes, &ToWorker::Fork { index: 7 }, DEFAULT_MAX_FRAME).unwrap();
    w.send(&bytes);
    let (code, err) = w.finish();
    assert_eq!(code, Some(exit_code::BAD_PARENT_MESSAGE), "{err}");
}

/// The zygote's answers, as a hostile worker would write them to the pool.
fn zygote_answers() -> Vec<(&'static str, Vec<u8>)> {
    let answers: [(&str, FromWorker<'_>); 4] = [
        ("Forked", FromWorker::Forked { pid: 1 }),
        ("NotForked", FromWorker::NotForked(NotForked::Threads(2))),
        (
            "NotForked(Failed)",
            FromWorker::NotForked(NotForked::Failed("x".repeat(100))),
        ),
        (
            "Reaped",
            FromWorker::Reaped {
                pid: 1,
                exit: ExitReport::Signal(9),
            },
        ),
    ];
    answers
        .into_iter()
        .map(|(name, msg)| {
            let mut out = Vec::new();
            encode_message(&mut out, &msg, DEFAULT_MAX_FRAME).unwrap();
            (name, out)
        })
        .collect()
}

/// A worker that writes a zygote's answer (`Forked`, `NotForked`,
/// `Reaped`) to the pool is a protocol violation, whether its caller took
/// it on the direct lane (`apply`) or through the dispatcher
/// (`apply_async`): a protocol error for that call, a replacement, and the
/// pool keeps serving; nothing is counted as forked in an exec pool.
#[test]
fn review3_a_zygote_answer_from_a_worker_is_a_protocol_violation() {
    let _w = watchdog(
        "review3_a_zygote_answer_from_a_worker_is_a_protocol_violation",
        LIMIT,
    );
    let pool = crate::builder(2).build().unwrap();
    let forked_at_start = pool.stats().workers_forked;
    for (name, bytes) in zygote_answers() {
        // The direct lane: an idle pool lends a worker to `apply`.
        let err = pool
            .apply(wire_write, (bytes.clone(), Then::Return))
            .unwrap_err();
        assert!(err.is_protocol(), "{name} on the lane: {err}");
        assert!(
            err.to_string().contains("unexpected"),
            "{name} on the lane: {err}"
        );
        // Through the dispatcher, beside other work. (An item queued behind
        // the bad one on its worker may fail with the same error, as in
        // wire.rs; every other one succeeds.)
        let bad = pool.apply_async(wire_write, (bytes, Then::Return)).unwrap();
        let good: Vec<Result<u64, procpool::Error>> = pool
            .with_chunksize(1)
            .imap_unordered(square, 0..20u64)
            .unwrap()
            .collect();
        assert_eq!(good.len(), 20);
        let err = bad.get().unwrap_err();
        assert!(err.is_protocol(), "{name} via the dispatcher: {err}");
        let bad_pid = err.worker_pid();
        let failed: Vec<_> = good.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.len() <= 2, "{name}: {failed:?}");
        for e in failed {
            assert!(e.is_protocol() && e.worker_pid() == bad_pid, "{name}: {e}");
        }
        assert!(
            err.to_string().contains(name.split('(').next().unwrap()),
            "{name} via the dispatcher names the message: {err}"
        );
    }
    assert_eq!(pool.apply(square, 7u64).unwrap(), 49);
    if crate::START == procpool::StartMethod::Exec {
        assert_eq!(forked_at_start, 0);
        assert_eq!(pool.stats().workers_forked, 0, "{:?}", pool.stats());
    }
    pool.join();
}

/// `PROCPOOL_ZYGOTE` is read by presence (any value) and is not cleared
/// from an exec'd worker's environment, which the pool's own environment
/// seeds: a pool process that happens to carry it (here through `env`, as
/// a launcher or a shell would pass it) must still get exec'd workers,
/// not zygotes on pipes.
#[test]
fn review3_an_inherited_zygote_variable_does_not_turn_execd_workers_into_zygotes() {
    let _w = watchdog(
        "review3_an_inherited_zygote_variable_does_not_turn_execd_workers_into_zygotes",
        LIMIT,
    );
    if crate::START != procpool::StartMethod::Exec {
        return;
    }
    let built = procpool::Pool::builder()
        .workers(1)
        .worker_program("/usr/bin/env")
        .worker_args([
            std::ffi::OsString::from("PROCPOOL_ZYGOTE=0"),
            FAULT_WORKER.into(),
        ])
        .startup_timeout(std::time::Duration::from_secs(10))
        .build();
    let pool = built.unwrap_or_else(|e| panic!("an exec pool did not start: {e}"));
    assert_eq!(pool.apply(square, 3u64).unwrap(), 9);
    pool.join();
}

//! Hostile bytes on the wire, both ways: nothing a worker writes can crash,
//! hang or exhaust the parent, and nothing the parent writes can make a
//! worker run part of a task.

use std::process::Stdio;
use std::time::Duration;

use procpool::Pool;
use procpool_protocol::frame::{read_frame, write_frame};
use procpool_protocol::{
    DEFAULT_MAX_FRAME, FromWorker, ItemsBuilder, Outcome, decode_from_worker, encode_done,
    encode_init, encode_run, exit_code, preamble, push_outcome,
};
use procpool_tests::{
    Then, bytes_of_len, len_of, recorded, square, temp_path, wait_until, watchdog, wire_write,
};

use crate::raw_worker::RawWorker;
use crate::{FAULT_WORKER, LIMIT};

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .worker_program(FAULT_WORKER)
        .stall_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn done_frame(batch: u64, outcomes: &[Outcome<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for o in outcomes {
        push_outcome(&mut body, o);
    }
    let mut out = Vec::new();
    encode_done(
        &mut out,
        batch,
        outcomes.len() as u32,
        &body,
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    out
}

/// Runs a task that writes `bytes` to the protocol stream, while another
/// worker keeps serving; checks the protocol error and the recovery.
fn misbehaves(name: &str, bytes: Vec<u8>, then: Then, warm_up: bool) {
    let _w = watchdog(name, LIMIT);
    let pool = pool(2);
    if warm_up {
        // Batch 0 completes first, so a result "for batch 0" is a duplicate.
        assert_eq!(pool.with_chunksize(1).map(square, [1u64]).unwrap(), vec![1]);
    }
    let before = pool.worker_pids();
    let bad = pool.apply_async(wire_write, (bytes, then)).unwrap();
    // Meanwhile the other worker (and then the replacement) keep serving.
    // A task queued behind the bad one on the same worker may have started
    // there before the violation was seen: it fails with the same protocol
    // error (it cannot run twice); every other one succeeds.
    let good: Vec<Result<u64, procpool::Error>> = pool
        .with_chunksize(1)
        .imap_unordered(square, 0..200u64)
        .unwrap()
        .collect();
    assert_eq!(good.len(), 200);
    let err = bad.get().unwrap_err();
    assert!(err.is_protocol(), "{name}: {err}");
    let bad_pid = err.worker_pid().unwrap();
    assert!(before.contains(&bad_pid), "{name}");
    for r in &good {
        if let Err(e) = r {
            assert!(
                e.is_protocol() && e.worker_pid() == Some(bad_pid),
                "{name}: {e}"
            );
        }
    }
    assert!(good.iter().filter(|r| r.is_err()).count() <= 2, "{name}");
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100, "{name}");
    let stats = pool.stats();
    assert_eq!(stats.worker_deaths, 1, "{name}: {stats:?}");
    assert!(wait_until(LIMIT, || pool.worker_pids().len() == 2));
}

#[test]
fn garbage_bytes() {
    misbehaves(
        "garbage_bytes",
        b"\xde\xad\xbe\xefnot a frame at all".to_vec(),
        Then::Hang,
        false,
    );
}

#[test]
fn a_truncated_frame_then_exit() {
    misbehaves(
        "a_truncated_frame_then_exit",
        vec![100, 0, 0, 0, 1, 2, 3],
        Then::Exit,
        false,
    );
}

#[test]
fn a_frame_that_stalls_half_written() {
    misbehaves(
        "a_frame_that_stalls_half_written",
        vec![100, 0, 0, 0, 1, 2, 3],
        Then::Hang,
        false,
    );
}

#[test]
fn a_frame_over_the_limit() {
    let mut bytes = (DEFAULT_MAX_FRAME + 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 64]);
    misbehaves("a_frame_over_the_limit", bytes, Then::Hang, false);
}

#[test]
fn a_result_for_a_batch_it_was_never_given() {
    let frame = done_frame(999_999, &[Outcome::Ok(procpool_protocol::Bytes::new(&[1]))]);
    misbehaves(
        "a_result_for_a_batch_it_was_never_given",
        frame,
        Then::Hang,
        false,
    );
}

#[test]
fn a_duplicate_result() {
    let frame = done_frame(0, &[Outcome::Ok(procpool_protocol::Bytes::new(&[1]))]);
    misbehaves("a_duplicate_result", frame, Then::Return, true);
}

#[test]
fn a_frame_that_decodes_to_nonsense() {
    let mut frame = Vec::new();
    write_frame(&mut frame, &[9, 9, 9, 9], DEFAULT_MAX_FRAME).unwrap();
    misbehaves("a_frame_that_decodes_to_nonsense", frame, Then::Hang, false);
}

#[test]
fn a_second_hello() {
    let mut frame = Vec::new();
    procpool_protocol::encode_hello(
        &mut frame,
        &procpool_protocol::Hello {
            build_id: "again".into(),
            pid: 1,
            tasks: vec![],
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    misbehaves("a_second_hello", frame, Then::Hang, false);
}

#[test]
fn an_argument_over_the_limit_is_refused_at_submit_and_handed_back() {
    let _w = watchdog(
        "an_argument_over_the_limit_is_refused_at_submit_and_handed_back",
        LIMIT,
    );
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .max_frame(1 << 20)
        .build()
        .unwrap();
    let big = vec![1u8; 2 << 20];
    let refused = pool.apply_async(len_of, big.clone()).unwrap_err();
    assert!(refused.error().is_serialization(), "{refused}");
    assert!(
        refused.to_string().contains("over the frame limit"),
        "{refused}"
    );
    assert_eq!(refused.into_arg(), big);
    // In a stream, only that item fails.
    let lens: Vec<_> = pool
        .imap(len_of, vec![vec![0u8; 10], big, vec![0u8; 20]])
        .unwrap()
        .collect();
    assert_eq!(*lens[0].as_ref().unwrap(), 10);
    assert!(lens[1].as_ref().unwrap_err().is_serialization());
    assert_eq!(*lens[2].as_ref().unwrap(), 20);
    // A refused task to a closed pool hands its argument back too.
    pool.close();
    let closed = pool.apply_async(len_of, vec![5u8; 3]).unwrap_err();
    assert!(closed.error().is_closed());
    assert_eq!(closed.into_arg(), vec![5u8; 3]);
}

#[test]
fn a_result_over_the_limit_fails_that_task_only() {
    let _w = watchdog("a_result_over_the_limit_fails_that_task_only", LIMIT);
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .max_frame(1 << 20)
        .build()
        .unwrap();
    let pid = pool.worker_pids()[0];
    let results: Vec<_> = pool
        .with_chunksize(3)
        .imap(bytes_of_len, [10u64, 2 << 20, 30])
        .unwrap()
        .collect();
    assert_eq!(results[0].as_ref().unwrap().len(), 10);
    let err = results[1].as_ref().unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert_eq!(results[2].as_ref().unwrap().len(), 30);
    assert_eq!(pool.worker_pids(), vec![pid], "the worker survived");
}

/// What these tests add to the raw worker.
impl RawWorker {
    /// Started with its stderr discarded; after its handshake.
    fn start() -> Self {
        Self::start_with(Stdio::null())
    }

    /// Waits (bounded by the watchdog) for the exit code.
    fn exit_code(mut self) -> Option<i32> {
        drop(self.child.stdin.take());
        self.child.wait().unwrap().code()
    }
}

fn worker_rejects(name: &str, after_preamble: Option<&[u8]>, raw: &[u8]) {
    let _w = watchdog(name, LIMIT);
    let mut w = RawWorker::start();
    match after_preamble {
        Some(bytes) => {
            w.send(&preamble());
            w.send(bytes);
        }
        None => w.send(raw),
    }
    assert_eq!(w.exit_code(), Some(exit_code::BAD_PARENT_MESSAGE), "{name}");
}

#[test]
fn the_worker_rejects_a_parent_that_is_not_procpool() {
    worker_rejects("not procpool", None, b"GET / HTTP/1.1\r\n\r\n");
    let mut other = preamble();
    other[8] = 42;
    worker_rejects("other version", None, &other);
}

#[test]
fn the_worker_rejects_malformed_frames() {
    worker_rejects("oversize", Some(&u32::MAX.to_le_bytes()), &[]);
    let mut nonsense = Vec::new();
    write_frame(&mut nonsense, &[7, 7, 7], DEFAULT_MAX_FRAME).unwrap();
    worker_rejects("nonsense", Some(&nonsense), &[]);
    let mut unknown = Vec::new();
    let mut items = ItemsBuilder::new();
    items.push(&postcard::to_stdvec(&1u64).unwrap());
    encode_run(&mut unknown, 0, 9999, false, &items, DEFAULT_MAX_FRAME).unwrap();
    worker_rejects("unknown task", Some(&unknown), &[]);
    // A truncated frame, then the end of the stream.
    worker_rejects("truncated", Some(&[50, 0, 0, 0, 1, 2]), &[]);
}

#[test]
fn a_malformed_batch_runs_none_of_its_items() {
    let _w = watchdog("a_malformed_batch_runs_none_of_its_items", LIMIT);
    let file = temp_path("partial");
    let mut w = RawWorker::start();
    w.send(&preamble());
    // Set the record file through the initializer, and check it ran.
    let mut init = Vec::new();
    let path = file.display().to_string();
    encode_init(
        &mut init,
        w.task("procpool_tests::init_store"),
        &postcard::to_stdvec(&path).unwrap(),
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    w.send(&init);
    let mut body = Vec::new();
    assert!(
        read_frame(
            w.child.stdout.as_mut().unwrap(),
            DEFAULT_MAX_FRAME,
            &mut body
        )
        .unwrap()
    );
    assert!(matches!(
        decode_from_worker(&body).unwrap(),
        FromWorker::InitDone(Outcome::Ok(_))
    ));
    // Three valid items, then one byte too many in the frame: the whole
    // message is refused before any item runs.
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
    let len = u32::from_le_bytes(run[..4].try_into().unwrap()) + 1;
    run[..4].copy_from_slice(&len.to_le_bytes());
    run.push(0);
    w.send(&run);
    assert_eq!(w.exit_code(), Some(exit_code::BAD_PARENT_MESSAGE));
    assert!(
        recorded(&file).is_empty(),
        "items ran: {:?}",
        recorded(&file)
    );
}

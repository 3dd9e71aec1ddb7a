//! A result nested 100,000 deep must not crash the parent.
//!
//! A task returns a [`DeepList`] 100,000 levels deep. Decoding it with the
//! derived `Deserialize` recurses once per level: on the caller's stack,
//! that overflowed and aborted the whole calling process. The call must
//! end either `Ok` (the full list) or in an error that is a decode error.
//!
//! A custom harness (`harness = false`): the call runs in a child process
//! (this executable, re-run with `PROCPOOL_TESTS_DEEP_RESULT_CHILD` set),
//! so an abort is reported as this test's failure, with the child's
//! stderr, instead of killing the test binary. Last line: the usual
//! `N passed, M failed`.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{DeepList, deep_list, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");
const CHILD_ENV: &str = "PROCPOOL_TESTS_DEEP_RESULT_CHILD";
const NAME: &str = "deep_result_does_not_crash_the_parent";
const DEPTH: u64 = 100_000;

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        std::process::exit(child());
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("\n0 passed, 0 failed");
        return;
    }
    let _w = watchdog(NAME, Duration::from_secs(120));
    match parent() {
        Ok(outcome) => {
            println!("test {NAME} ... ok ({outcome})");
            println!("\n1 passed, 0 failed");
        }
        Err(why) => {
            println!("test {NAME} ... FAILED\n{why}");
            println!("\n0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

/// What `DeepList` is, with serde's derived (recursive) `Serialize`.
#[derive(serde::Serialize)]
enum DerivedList {
    Nil,
    Cons(Box<DerivedList>),
}

/// The worker encodes `DeepList` without recursion: check, at a depth any
/// stack handles, that its bytes are the derived encoding's, and that the
/// derived decoding reads them back.
fn check_the_encoding() -> Result<(), String> {
    let mut derived = DerivedList::Nil;
    for _ in 0..5 {
        derived = DerivedList::Cons(Box::new(derived));
    }
    let expected = postcard::to_stdvec(&derived).unwrap();
    let ours = postcard::to_stdvec(&DeepList::of_depth(5)).unwrap();
    if ours != expected {
        return Err(format!(
            "DeepList encodes as {ours:?}, the derived encoding is {expected:?}"
        ));
    }
    let back: DeepList = postcard::from_bytes(&ours).map_err(|e| e.to_string())?;
    if back.depth() != 5 {
        return Err(format!("decoded a list {} deep", back.depth()));
    }
    Ok(())
}

/// Runs the call in a child process and judges how the child ended.
fn parent() -> Result<String, String> {
    check_the_encoding()?;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr: String = stderr.chars().take(2000).collect();
    let outcome = stdout.trim().to_owned();
    if out.status.success() {
        return Ok(outcome);
    }
    let how = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({})", out.status),
    };
    Err(format!(
        "the process that called apply(deep_list, {DEPTH}) {how}\n\
         its report: {outcome:?}\n\
         its stderr:\n{stderr}"
    ))
}

/// The call itself: exit code 0 when it ended in `Ok` with the whole list
/// or in a decode error, 1 otherwise (an abort shows as a signal).
fn child() -> i32 {
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .build()
        .expect("the pool starts");
    let got: Result<DeepList, procpool::Error> = pool.apply(deep_list, DEPTH);
    match got {
        Ok(list) => {
            let depth = list.depth();
            println!("Ok: a list {depth} deep");
            i32::from(depth != DEPTH)
        }
        Err(e) if e.is_serialization() && e.to_string().contains("decode") => {
            println!("a decode error: {e}");
            0
        }
        Err(e) => {
            println!("an error that is not a decode error: {e}");
            1
        }
    }
}

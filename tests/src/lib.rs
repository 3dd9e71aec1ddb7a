//! Fault-injecting tasks for procpool's integration tests, and test
//! helpers.
//!
//! The `fault-worker` binary serves [`registry`]; tests name the same
//! functions, so both sides agree on task names by construction.

use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `x * x`.
pub fn square(x: u64) -> u64 {
    x * x
}

/// `a * b + c`: a task of three arguments, for `starmap`.
pub fn mul_add(a: u64, b: u64, c: u64) -> u64 {
    a * b + c
}

/// Panics with `message`.
pub fn panic_with(message: String) -> u64 {
    panic!("{message}")
}

/// Exits the worker with `code`.
pub fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}

/// Aborts the worker (SIGABRT).
pub fn abort_now() {
    std::process::abort()
}

/// Dies of SIGSEGV, as a fault in C code would. (Rust's runtime handles
/// SIGSEGV to report stack overflows, so the default action is restored
/// first, as it is for a fault the handler does not recognise.)
pub fn segfault() {
    // SAFETY: signal and raise only change this process's disposition and
    // deliver a signal to it; SIGSEGV's default action ends the process,
    // which is the point of the task.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
}

/// Sleeps `ms` milliseconds; returns `ms`.
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The worker's pid.
pub fn pid() -> u32 {
    std::process::id()
}

/// Writes noise to stdout (through `print!`, and raw bytes to fd 1 that
/// look like a frame) and to stderr, then returns `x`.
pub fn noisy(x: u64) -> u64 {
    println!("noise on stdout for {x}");
    print!("\x05\x00\x00\x00hello");
    eprintln!("noise on stderr for {x}");
    let raw = b"\xff\xff\xff\x7fraw bytes on fd 1\n";
    // SAFETY: writes from a valid buffer of the given length to fd 1.
    unsafe {
        libc::write(1, raw.as_ptr().cast(), raw.len());
    }
    x
}

/// A task with its own error type: parses an integer.
pub fn parse_int(s: String) -> Result<i64, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("cannot parse `{s}`: {e}"))
}

/// A value whose serialization always fails.
#[derive(Debug, Deserialize)]
pub struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unencodable refuses to be encoded",
        ))
    }
}

/// Returns a value that cannot be encoded.
pub fn unencodable() -> Unencodable {
    Unencodable
}

/// A number whose decoding fails when it is odd.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EvenOnly(pub u64);

impl<'de> Deserialize<'de> for EvenOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v % 2 == 1 {
            return Err(serde::de::Error::custom(format!("{v} is odd")));
        }
        Ok(EvenOnly(v))
    }
}

/// Wraps `x`; the parent fails to decode it when `x` is odd.
pub fn even_only(x: u64) -> EvenOnly {
    EvenOnly(x)
}

static INIT_VALUE: Mutex<Option<String>> = Mutex::new(None);

/// An initializer: stores `value` in the worker.
pub fn init_store(value: String) {
    *INIT_VALUE.lock() = Some(value);
}

/// An initializer that fails with the task's own error.
pub fn init_fail(reason: String) -> Result<(), String> {
    Err(reason)
}

/// An initializer that panics.
pub fn init_panic(reason: String) {
    panic!("{reason}")
}

/// What [`init_store`] stored in this worker.
pub fn init_value() -> Option<String> {
    INIT_VALUE.lock().clone()
}

/// The descriptors open in the worker, as `fd -> target` lines.
pub fn open_fds() -> Vec<String> {
    fd_table(std::process::id())
}

/// The descriptor table of a process, read from `/proc/<pid>/fd`.
pub fn fd_table(pid: u32) -> Vec<String> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().parse().ok()?;
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((n, target.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds.into_iter()
        .map(|(n, t)| format!("{n} -> {t}"))
        .collect()
}

/// Every fault task.
pub fn registry() -> procpool::Registry {
    procpool::Registry::new()
        .task(square)
        .task(mul_add)
        .task(panic_with)
        .task(exit_with)
        .task(abort_now)
        .task(segfault)
        .task(sleep_ms)
        .task(pid)
        .task(noisy)
        .task(parse_int)
        .task(unencodable)
        .task(even_only)
        .task(init_store)
        .task(init_fail)
        .task(init_panic)
        .task(init_value)
        .task(open_fds)
}

/// Turns a hang into a failure: if not dropped within `limit`, prints
/// which test hung and exits the test process with code 99 (its workers
/// see their pipes close and exit too).
#[must_use = "the watchdog is disarmed when dropped"]
#[derive(Debug)]
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

/// Arms a [`Watchdog`].
pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = name.to_owned();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!(
                "watchdog: `{name}` still running after {limit:?}: treating the hang as a failure"
            );
            std::process::exit(99);
        }
    });
    Watchdog { _disarm: tx }
}

/// Whether process `pid` exists at all (alive or zombie).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter of process `pid` (`Z` for a zombie), if it exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

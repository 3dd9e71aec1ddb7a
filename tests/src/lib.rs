//! Fault-injecting tasks for procpool's integration tests, and test
//! helpers.
//!
//! The `fault-worker` binary serves [`registry`]; tests name the same
//! functions, so both sides agree on task names by construction.

use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod payloads;
pub mod sshd;
mod state;
mod zygote;
mod zygote_review;
mod zygote_review2;
mod zygote_review3;
pub use payloads::{
    Mixed, PanicsAfterBytes, big_and_marker_shaped, big_then_killed, big_then_unencodable,
    bytes_len, digest, digest_of, echo_bytes, echo_mixed, forge_after_listing_zero, forged_marker,
    list_fifo, many_large, mixed, mixed_of, pattern, pattern_bytes, payload_maps_held,
    payload_memfds, postcard_inside, takes_panics_after_bytes, vm_size,
};
pub use state::{
    Label, Tally, TallyReport, label_with, start_label, start_tally, start_tally_or_fail, tally,
    tally_marker, worker_index,
};
pub use zygote::{init_print_partial, init_start_thread, parent_pid};
pub use zygote_review::{
    ballast_len, init_ballast_mib, init_ignore_sigchld, init_join_threads, init_sleep_if_exists,
    init_spawn_child, spawn_sleeper,
};
pub use zygote_review2::{
    children_statuses, exit_main_thread, init_ignore_sigchld_and_spawn_short,
    init_reap_children_in_handler, init_spawn_child_then_abort, join_group, pid_after_ms,
    sigchld_disposition,
};
pub use zygote_review3::{init_open_file, process_report, read_shared_byte};

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

/// Panics with a payload that is not a string.
pub fn panic_with_number(n: u32) -> u64 {
    std::panic::panic_any(n)
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
    segfault_now()
}

fn segfault_now() {
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

/// The worker's executable, as the kernel names it (where a shipped
/// binary runs from).
pub fn exe_path() -> String {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
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

/// A number the caller cannot encode when it is odd.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct NoOdd(pub u64);

impl Serialize for NoOdd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 2 == 1 {
            return Err(serde::ser::Error::custom(format!("{} is odd", self.0)));
        }
        s.serialize_u64(self.0)
    }
}

/// The number inside.
pub fn no_odd(x: NoOdd) -> u64 {
    x.0
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

/// How a fault task kills its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Death {
    /// `exit(code)`.
    Exit(i32),
    /// `abort()`: SIGABRT.
    Abort,
    /// A segmentation fault: SIGSEGV with its default action.
    Segv,
    /// SIGKILL, as the OOM killer or an operator would send it.
    Kill,
}

impl Death {
    /// Every kind, for test matrices.
    pub const ALL: [Death; 4] = [Death::Exit(3), Death::Abort, Death::Segv, Death::Kill];

    /// Kills this process accordingly.
    pub fn die(self) -> ! {
        match self {
            Death::Exit(code) => std::process::exit(code),
            Death::Abort => std::process::abort(),
            Death::Segv => segfault_now(),
            // SAFETY: raise only delivers a signal to this process.
            Death::Kill => unsafe {
                libc::raise(libc::SIGKILL);
            },
        }
        unreachable!("{self:?} did not end the process")
    }

    /// How the pool should report this death.
    pub fn exit(self) -> procpool::Exit {
        match self {
            Death::Exit(code) => procpool::Exit::Code(code),
            Death::Abort => procpool::Exit::Signal(libc::SIGABRT),
            Death::Segv => procpool::Exit::Signal(libc::SIGSEGV),
            Death::Kill => procpool::Exit::Signal(libc::SIGKILL),
        }
    }

    /// Parses `exit:N`, `abort`, `segv` or `kill`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "abort" => Some(Death::Abort),
            "segv" => Some(Death::Segv),
            "kill" => Some(Death::Kill),
            _ => s.strip_prefix("exit:")?.parse().ok().map(Death::Exit),
        }
    }
}

/// An argument whose decoding, in the worker, kills the worker.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DecodeBomb(pub Death);

impl<'de> Deserialize<'de> for DecodeBomb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Death::deserialize(d)?.die()
    }
}

/// Dies while its argument is decoded.
pub fn crash_decoding(_: DecodeBomb) -> u64 {
    unreachable!("decoding the argument ended the process")
}

/// A result whose encoding, in the worker, kills the worker.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct EncodeBomb(pub Death);

impl Serialize for EncodeBomb {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        self.0.die()
    }
}

/// Dies while its result is encoded.
pub fn crash_encoding(death: Death) -> EncodeBomb {
    EncodeBomb(death)
}

/// Dies while running.
pub fn crash_running(death: Death) -> u64 {
    death.die()
}

/// Returns 1 at once, and dies 200 ms later, after its result was sent.
pub fn crash_after_result(death: Death) -> u64 {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        death.die();
    });
    1
}

/// Ignores SIGTERM, then never returns.
pub fn ignore_sigterm_and_hang() {
    // SAFETY: sets this (worker) process's disposition of SIGTERM.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Stops its own worker with SIGSTOP: it hangs until killed.
pub fn stop_self() {
    // SAFETY: raise only delivers a signal to this process.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}

/// Starts a grandchild (`sleep 1000`), writes its pid to `pidfile`, and
/// never returns.
#[allow(
    clippy::zombie_processes,
    reason = "the grandchild is never waited for on purpose: the pool must kill it with the worker's group"
)]
pub fn grandchild_and_hang(pidfile: String) {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    std::fs::write(&pidfile, child.id().to_string()).expect("write pidfile");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Appends `id` to the record file named by the initializer
/// ([`init_store`]), proving how often each task really ran; returns `id`.
pub fn record(id: u64) -> u64 {
    use std::io::Write as _;
    let path = INIT_VALUE
        .lock()
        .clone()
        .expect("record needs init_store(path)");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open the record file");
    f.write_all(format!("{id}\n").as_bytes()).expect("append");
    id
}

/// Creates the file `path`, then sleeps `ms` milliseconds: a task whose
/// start the test can see.
pub fn announce_and_sleep(path: String, ms: u64) -> u64 {
    std::fs::write(&path, b"running").expect("write the marker");
    sleep_ms(ms)
}

/// Submits a task that sleeps a minute and returns once it is running in
/// a worker (not merely queued), so a signal sent next hits it mid-task.
pub fn running_task(pool: &procpool::Pool) -> procpool::AsyncResult<u64> {
    let marker = temp_path("running");
    let handle = pool
        .apply_async(announce_and_sleep, (marker.display().to_string(), 60_000))
        .expect("submit");
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "the task never started"
    );
    let _ = std::fs::remove_file(&marker);
    handle
}

/// Sleeps 300 ms, then [`record`]s `id`.
pub fn record_slowly(id: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    record(id)
}

/// How many times each id was recorded in `path`.
pub fn recorded(path: &std::path::Path) -> std::collections::BTreeMap<u64, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.parse().expect("an id")).or_default() += 1;
    }
    counts
}

/// What a chaos task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chaos {
    /// Records `id` and returns it.
    Work,
    /// Panics.
    Panic,
    /// Exits with code 3.
    Crash,
    /// Sleeps a minute (its deadline ends it).
    Hang,
}

/// One chaos-soak task.
pub fn chaos(kind: Chaos, id: u64) -> u64 {
    match kind {
        Chaos::Work => record(id),
        Chaos::Panic => panic!("chaos panic {id}"),
        Chaos::Crash => std::process::exit(3),
        Chaos::Hang => sleep_ms(60_000),
    }
}

/// Allocates and touches `mib` MiB; returns the sum of a byte per page.
pub fn allocate_mib(mib: u64) -> u64 {
    let mut v = vec![0u8; (mib as usize) << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v.iter().step_by(4096).map(|&b| u64::from(b)).sum()
}

/// What a wire-fault task does after writing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Then {
    /// Return normally (the runtime then sends the real result).
    Return,
    /// Exit at once with code 0.
    Exit,
    /// Never return.
    Hang,
}

/// The worker runtime's protocol output descriptor (stdout moved aside).
const PROTOCOL_OUT_FD: i32 = 4;

/// Writes `bytes` straight to the protocol stream, as a broken or hostile
/// worker would, then does `then`.
pub fn wire_write(bytes: Vec<u8>, then: Then) -> u64 {
    let mut written = 0;
    while written < bytes.len() {
        // SAFETY: writes from a live buffer of the given length to the
        // worker's protocol descriptor.
        let n = unsafe {
            libc::write(
                PROTOCOL_OUT_FD,
                bytes[written..].as_ptr().cast(),
                bytes.len() - written,
            )
        };
        assert!(n > 0, "write to the protocol descriptor failed");
        written += n as usize;
    }
    match then {
        Then::Return => 0,
        Then::Exit => std::process::exit(0),
        Then::Hang => sleep_ms(600_000),
    }
}

/// Returns `n` bytes, for results larger than a frame.
pub fn bytes_of_len(n: u64) -> Vec<u8> {
    vec![7; n as usize]
}

/// The length of its argument.
pub fn len_of(bytes: Vec<u8>) -> u64 {
    bytes.len() as u64
}

/// Logs `count` records tagged `tag` at warn level, and one at debug.
pub fn log_lines(tag: String, count: u64) -> u64 {
    for i in 0..count {
        log::warn!("{tag} line {i}");
    }
    log::debug!("{tag} debug line");
    count
}

// ---------------------------------------------------------------------
// Fault tasks for the regression tests of `tests/integration/seams.rs`
// (and the `sigchld_ignored` and `deep_result` test binaries).
// ---------------------------------------------------------------------

/// Fault 3: moves this worker out of its own process group into its
/// parent's (the test process's: `setpgid(0, getpgid(getppid()))`),
/// ignores SIGTERM, creates `marker` to say so, and never returns. A pool
/// that signals only the group its worker started in no longer reaches it.
pub fn leave_group_and_hang(marker: String) {
    // SAFETY: getppid, getpgid and setpgid only read and change this
    // process's own process group; signal changes this process's SIGTERM
    // disposition. No memory is touched.
    unsafe {
        let group = libc::getpgid(libc::getppid());
        assert!(group > 0, "getpgid(getppid()) failed");
        assert_eq!(libc::setpgid(0, group), 0, "setpgid failed");
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    std::fs::write(&marker, b"moved").expect("write the marker");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Fault 4: starts a grandchild `sleep 600` that leaves the worker's
/// process group and session (`setsid()` before exec), writes its pid to
/// `pidfile`, then hangs (`hang`) or returns the grandchild's pid.
#[allow(
    clippy::zombie_processes,
    reason = "the grandchild is never waited for on purpose: it must outlive the task"
)]
pub fn setsid_grandchild(pidfile: String, hang: bool) -> u32 {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid, which is async-signal-safe, and builds an io::Error
    // from errno, which does not allocate.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn the setsid grandchild");
    let pid = child.id();
    std::fs::write(&pidfile, pid.to_string()).expect("write the pidfile");
    if hang {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    pid
}

/// Bytes written to the protocol pipe that the parent has not read yet
/// (FIONREAD on the write end, which Linux answers).
fn protocol_unread() -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // at a live local.
    let r = unsafe { libc::ioctl(PROTOCOL_OUT_FD, libc::FIONREAD, &mut n) };
    (r == 0).then_some(n)
}

/// Fault 6: returns this worker's pid, and has a thread exit the worker
/// (code 3) right after the result has left. With `delay_ms == 0` the
/// thread waits until the result is in the protocol pipe (FIONREAD on its
/// write end; 50 ms at most) and exits at once: the worker dies while its
/// caller is still taking the result, so the exchange succeeds and the
/// death is seen while the caller may still hold the worker. Otherwise
/// the thread exits `delay_ms` after the task returned, once the worker
/// was given back.
pub fn exit_after_result(delay_ms: u64) -> u32 {
    std::thread::spawn(move || {
        if delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(delay_ms));
        } else {
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_millis(50) {
                if protocol_unread().is_none_or(|n| n > 0) {
                    break;
                }
                std::thread::yield_now();
            }
        }
        std::process::exit(3);
    });
    std::process::id()
}

/// Fault 12b: forks a child that keeps every descriptor of the worker
/// (its protocol pipes included), sleeps `secs` seconds and `_exit`s;
/// returns the child's pid at once.
pub fn fork_pipe_holder(secs: u32) -> u32 {
    // SAFETY: fork duplicates this process; the child only calls sleep and
    // _exit, which are async-signal-safe, so the locks other threads held
    // at the fork do not matter.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: in the child, as above.
        unsafe {
            libc::sleep(secs);
            libc::_exit(0)
        }
    }
    pid as u32
}

/// Starts a thread named `doomed` that panics with `message`, joins it, and
/// returns whether it panicked: the task itself succeeds.
pub fn panic_in_thread(message: String) -> bool {
    std::thread::Builder::new()
        .name("doomed".into())
        .spawn(move || panic!("{message}"))
        .expect("spawn a thread")
        .join()
        .is_err()
}

pub use procpool_protocol::test_support::DeepList;

/// Returns a list `depth` levels deep.
pub fn deep_list(depth: u64) -> DeepList {
    DeepList::of_depth(depth)
}

/// The depth of the list it was given.
pub fn deep_list_depth(list: DeepList) -> u64 {
    list.depth()
}

/// Every fault task.
pub fn registry() -> procpool::Registry {
    procpool::Registry::new()
        .task(square)
        .task(mul_add)
        .task(panic_with)
        .task(panic_with_number)
        .task(exit_with)
        .task(abort_now)
        .task(segfault)
        .task(sleep_ms)
        .task(pid)
        .task(exe_path)
        .task(noisy)
        .task(parse_int)
        .task(unencodable)
        .task(even_only)
        .task(no_odd)
        .task(init_store)
        .task(init_fail)
        .task(init_panic)
        .task(init_value)
        .task(open_fds)
        .task(crash_decoding)
        .task(crash_encoding)
        .task(crash_running)
        .task(crash_after_result)
        .task(ignore_sigterm_and_hang)
        .task(stop_self)
        .task(grandchild_and_hang)
        .task(record)
        .task(record_slowly)
        .task(announce_and_sleep)
        .task(wire_write)
        .task(bytes_of_len)
        .task(len_of)
        .task(log_lines)
        .task(panic_in_thread)
        .task(deep_list)
        .task(deep_list_depth)
        .task(chaos)
        .task(allocate_mib)
        .task(leave_group_and_hang)
        .task(setsid_grandchild)
        .task(exit_after_result)
        .task(fork_pipe_holder)
        .task(tree_then_violate)
        .task(record_then_sleep)
        .task(record_encodable)
        .task(ignore_sigterm_announce_and_sleep)
        .task(worker_index)
        .task(children_then_wait_for)
        .task(parent_pid)
        .task(init_start_thread)
        .task(init_print_partial)
        .task(init_spawn_child)
        .task(init_join_threads)
        .task(init_ignore_sigchld)
        .task(init_sleep_if_exists)
        .task(init_ballast_mib)
        .task(ballast_len)
        .task(spawn_sleeper)
        .task(init_spawn_child_then_abort)
        .task(init_reap_children_in_handler)
        .task(join_group)
        .task(sigchld_disposition)
        .task(children_statuses)
        .task(pid_after_ms)
        .task(init_ignore_sigchld_and_spawn_short)
        .task(exit_main_thread)
        .task(process_report)
        .task(init_open_file)
        .task(read_shared_byte)
        .task(echo_bytes)
        .task(pattern_bytes)
        .task(digest)
        .task(payload_memfds)
        .task(forged_marker)
        .task(forge_after_listing_zero)
        .task(list_fifo)
        .task(big_and_marker_shaped)
        .task(big_then_killed)
        .task(many_large)
        .task(takes_panics_after_bytes)
        .task(mixed)
        .task(echo_mixed)
        .task(big_then_unencodable)
        .task(postcard_inside)
        .task(payload_maps_held)
        .task(vm_size)
        .task(bytes_len)
        .initializer(start_tally)
        .try_initializer(start_tally_or_fail)
        .initializer(start_label)
        .task_with_state(tally)
        .task_with_state(label_with)
}

/// A logger that panics on a record containing its marker: for tests of
/// what a panicking logger does to the pool's threads. (Installing it is
/// process-wide: such a test is a binary of its own.)
#[derive(Debug)]
pub struct PanickyLogger(pub &'static str);

impl log::Log for PanickyLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.args().to_string().contains(self.0) {
            panic!("logger panics");
        }
    }
    fn flush(&self) {}
}

/// Turns a hang into a failure: if not dropped within `limit`, writes
/// which test hung straight to file descriptor 2 and ends the test process
/// with exit code 99 (its workers die with it: they carry
/// `PR_SET_PDEATHSIG`).
///
/// The message bypasses `eprintln!` on purpose: libtest captures what a
/// test thread (and every thread it spawns) prints, and a process that
/// ends here never shows its captured output. A raw `write(2)` always
/// reaches the terminal or the CI log.
#[must_use = "the watchdog is disarmed when dropped"]
#[derive(Debug)]
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

/// Arms a [`Watchdog`].
pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    // Formatted now: nothing is allocated or locked when it fires.
    let message = format!(
        "\nwatchdog: `{name}` still running after {limit:?}: treating the hang as a failure\n"
    );
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            write_to_stderr_fd(message.as_bytes());
            // SAFETY: _exit ends the process at once, running no atexit
            // handler and taking no lock that a hung thread might hold;
            // nothing is left to flush (the message went out unbuffered).
            unsafe { libc::_exit(99) }
        }
    });
    Watchdog { _disarm: tx }
}

/// Writes `bytes` to file descriptor 2 with `write(2)`, past any output
/// capture, retrying short writes and EINTR.
pub fn write_to_stderr_fd(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live buffer of the given length to fd 2.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
    }
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

/// Polls `done` every 10 ms until it holds or `ceiling` passes; returns
/// whether it held. For events only visible from outside (a process
/// disappearing from `/proc`): the ceiling is a hang bound, not a timing
/// assertion.
pub fn wait_until(ceiling: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > ceiling {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh path in the temporary directory, unique to this process and call.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("procpool-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill only sends a signal; callers pass pids of their own
    // live workers.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Sends `signal` to `pid` if it is still there: for a test that kills a
/// group of workers that the pool may be reaping meanwhile (a pool whose
/// loop panicked kills and reaps every worker at once). Whether it was.
pub fn kill_if_alive(pid: u32, signal: i32) -> bool {
    // SAFETY: kill only sends a signal; callers pass pids of workers of
    // their own pool, which holds them until it has reaped them, so a pid
    // is not reused before the pool's `worker_pids` stops listing it.
    unsafe { libc::kill(pid as i32, signal) == 0 }
}

/// Whether `pid` is gone or a zombie that is not ours to reap (its
/// parent is gone): the process no longer runs.
pub fn not_running(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// Pids of this process's children that exist (zombies included).
pub fn children_of_this_process() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, r)| r.split_whitespace().collect());
        if fields.get(1) == Some(&me.as_str()) {
            kids.push(pid);
        }
    }
    kids
}

/// How many of this process's threads have a name (as the kernel keeps
/// it: cut to 15 bytes) that starts with `prefix`: `"procpool-"` for every
/// thread a pool started, `"procpool-spawne"` for its spawner thread.
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .filter(|c| c.trim().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// Waits up to 10 s for every trace of this process's pools to be gone,
/// and panics naming what is left: a child process, a thread a pool
/// started (named `procpool-…`), or descriptors beyond the `fds` open
/// before. Other tests' threads may come and go meanwhile.
pub fn assert_pools_gone(fds: usize) {
    let ceiling = Duration::from_secs(10);
    assert!(
        wait_until(ceiling, || children_of_this_process().is_empty()),
        "children left: {:?}",
        children_of_this_process()
    );
    assert!(
        wait_until(ceiling, || threads_named("procpool-") == 0),
        "pool threads left: {}",
        threads_named("procpool-")
    );
    assert!(
        wait_until(ceiling, || fd_and_thread_counts().0 == fds),
        "descriptors back at {fds}: {:?}",
        fd_and_thread_counts()
    );
}

/// How many descriptors and threads this process has.
pub fn fd_and_thread_counts() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    // Reading a directory opens one descriptor of its own; it is counted
    // the same way every time.
    (count("/proc/self/fd"), count("/proc/self/task"))
}

/// A logger that, the first time it receives a record containing
/// `slow-marker` (see [`held_apply`]), sleeps `delay` in the calling
/// thread: it holds a direct-lane caller inside its call, between reading
/// the worker's `Log` frame and its `Done` frame.
struct SlowLogger {
    delay: Duration,
    entered: std::sync::atomic::AtomicBool,
}

impl log::Log for SlowLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        use std::sync::atomic::Ordering;
        if r.args().to_string().contains("slow-marker")
            && !self.entered.swap(true, Ordering::SeqCst)
        {
            std::thread::sleep(self.delay);
        }
    }

    fn flush(&self) {}
}

static SLOW_LOGGER: std::sync::OnceLock<&'static SlowLogger> = std::sync::OnceLock::new();

/// Installs the process-wide logger that holds a direct-lane caller for
/// `delay` (one use per test binary). Call it before building the pool:
/// workers forward log records at the level set when they start.
pub fn hold_lane_callers(delay: Duration) {
    let logger: &'static SlowLogger = Box::leak(Box::new(SlowLogger {
        delay,
        entered: Default::default(),
    }));
    log::set_logger(logger).expect("one logger per test binary");
    log::set_max_level(log::LevelFilter::Warn);
    let _ = SLOW_LOGGER.set(logger);
}

/// Starts a blocking `apply` on another thread and returns once it is held
/// inside its direct-lane call (see [`hold_lane_callers`]), with the
/// caller's handle.
pub fn held_apply(
    pool: &std::sync::Arc<procpool::Pool>,
) -> std::thread::JoinHandle<Result<u64, procpool::Error>> {
    let logger = SLOW_LOGGER.get().expect("hold_lane_callers first");
    let p = pool.clone();
    let caller = std::thread::spawn(move || p.apply(log_lines, ("slow-marker".to_owned(), 1)));
    while !logger.entered.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    caller
}

/// Review 2: starts a child `C` (its own session, every descriptor but
/// stderr closed) that forks `n` grandchildren `G` (each `pause()`s
/// forever), then watches this worker's state and exits 300 µs after it
/// sees the worker stopped (the pool's SIGSTOP before its tree walk). Writes
/// `C G1 G2 ...` to `pidfile`, then breaks the protocol (an oversized frame
/// length) and hangs: the pool removes the worker and kills its tree.
pub fn tree_then_violate(n: u32, pidfile: String) -> u64 {
    let w = std::process::id();
    let stat = std::ffi::CString::new(format!("/proc/{w}/stat")).expect("no NUL");
    // SAFETY: after fork the child calls only async-signal-safe functions
    // (setsid, close, fork, pause, open, read, nanosleep, _exit) on memory
    // allocated before the fork.
    let c = unsafe { libc::fork() };
    assert!(c >= 0, "fork failed");
    if c == 0 {
        // SAFETY: as above.
        unsafe {
            libc::setsid();
            for fd in 0..1024 {
                if fd != 2 {
                    libc::close(fd);
                }
            }
            for _ in 0..n {
                if libc::fork() == 0 {
                    loop {
                        libc::pause();
                    }
                }
            }
            let mut buf = [0u8; 1024];
            loop {
                let fd = libc::open(stat.as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    libc::_exit(0);
                }
                let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
                if len > 0 {
                    let s = &buf[..len as usize];
                    if let Some(i) = s.iter().rposition(|&b| b == b')')
                        && let Some(&st) = s.get(i + 2)
                        && (st == b'T' || st == b'Z' || st == b'X')
                    {
                        let ts = libc::timespec {
                            tv_sec: 0,
                            tv_nsec: 300_000,
                        };
                        libc::nanosleep(&ts, std::ptr::null_mut());
                        libc::_exit(0);
                    }
                }
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000,
                };
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
        }
    }
    let children = format!("/proc/{c}/task/{c}/children");
    let gs = loop {
        let s = std::fs::read_to_string(&children).unwrap_or_default();
        let gs: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        if gs.len() >= n as usize {
            break gs;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::fs::write(&pidfile, format!("{c} {}", gs.join(" "))).expect("write pidfile");
    wire_write(vec![0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4], Then::Hang)
}

/// Review 2: [`record`]s `id`, then sleeps `ms` milliseconds.
pub fn record_then_sleep(id: u64, ms: u64) -> u64 {
    record(id);
    sleep_ms(ms);
    id
}

// ---------------------------------------------------------------------
// Tasks of the hostile review of the async/cancel change
// (`tests/integration/review_async.rs`).
// ---------------------------------------------------------------------

/// A number whose encoding, in the parent, fails when it is `None`; it
/// decodes (in the worker) as a plain `u64`.
#[derive(Debug, Clone, Copy)]
pub struct MaybeEncodable(pub Option<u64>);

impl Serialize for MaybeEncodable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => v.serialize(s),
            None => Err(serde::ser::Error::custom("MaybeEncodable(None) refuses")),
        }
    }
}

impl<'de> Deserialize<'de> for MaybeEncodable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(|v| MaybeEncodable(Some(v)))
    }
}

/// [`record`]s its number.
pub fn record_encodable(x: MaybeEncodable) -> u64 {
    record(x.0.expect("decoded values are Some"))
}

/// Ignores SIGTERM, creates `marker`, sleeps `ms` milliseconds and
/// returns `ms`: a task that outlives the SIGTERM of a kill but finishes
/// within its grace.
pub fn ignore_sigterm_announce_and_sleep(marker: String, ms: u64) -> u64 {
    // SAFETY: sets this (worker) process's disposition of SIGTERM.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    std::fs::write(&marker, b"running").expect("write the marker");
    sleep_ms(ms)
}

// ---------------------------------------------------------------------
// Tasks of the hostile review of the halt mark
// (`tests/integration/review_halt.rs`).
// ---------------------------------------------------------------------

/// Starts `children` sleeping child processes (so a kill of this worker
/// walks a large descendant tree), creates `marker`, then waits (polling
/// every 100 µs) until the file `go` exists and returns `children`. The
/// children are left to the worker's tree, which the pool kills.
pub fn children_then_wait_for(go: String, marker: String, children: u32) -> u32 {
    let mut kids = Vec::new();
    for _ in 0..children {
        kids.push(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .expect("spawn sleep"),
        );
    }
    std::fs::write(&marker, b"running").expect("write the marker");
    while !std::path::Path::new(&go).exists() {
        std::thread::sleep(Duration::from_micros(100));
    }
    drop(kids);
    children
}

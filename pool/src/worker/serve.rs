//! The worker's serve loop: handshake, then one batch at a time.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use procpool_protocol::Bytes;
use procpool_protocol::frame::read_frame;
use std::sync::Arc;

use parking_lot::Mutex;
use procpool_protocol::{
    FromWorker, Hello, Location, LogRecord, Outcome, PREAMBLE_LEN, StateUse, ToWorker,
    check_preamble, decode_run, decode_to_worker, encode_done, encode_hello, encode_init_done,
    encode_log, encode_message, exit_code, preamble, push_outcome,
};

use super::{ItemError, Registry, WorkerState};
use crate::payload;
use crate::sys::{ProtocolStdio, SharedCounter};

/// A batch's outcomes so far are sent early once they reach this age, so a
/// long batch streams results and a crash loses as little as possible.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Most items between two looks at the clock.
const MAX_CLOCK_STRIDE: u32 = 256;

/// Room kept in a frame for the `Done` header.
const DONE_HEADER_ROOM: usize = 32;

thread_local! {
    /// Set by the panic hook, taken by the code that caught the panic.
    static LAST_PANIC: RefCell<Option<Location>> = const { RefCell::new(None) };
}

/// How a serve loop runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    pub(crate) max_frame: u32,
    /// The loop owns its process (a real worker), so process-wide hooks
    /// are its to set: a panic hook recording panic locations, and a logger
    /// forwarding `log` records to the parent at this level.
    pub(crate) own_process: Option<log::LevelFilter>,
    /// Large results go through shared memory (`payload.rs`); only with a
    /// progress counter, whose page carries the pool's word that it took
    /// them.
    pub(crate) share_results: bool,
}

pub(crate) fn serve(
    registry: &Registry,
    stdio: ProtocolStdio,
    progress: Option<&SharedCounter>,
    opts: ServeOptions,
) -> i32 {
    let ProtocolStdio { input, output } = stdio;
    let output = Arc::new(Mutex::new(output));
    install_hooks(opts, &output);
    let share = opts.share_results && progress.is_some();
    serve_loop(
        registry,
        input,
        output,
        progress,
        opts.max_frame,
        share,
        None,
    )
}

/// Sets the process-wide hooks of a worker that owns its process (see
/// [`ServeOptions::own_process`]).
pub(super) fn install_hooks(opts: ServeOptions, output: &Arc<Mutex<std::fs::File>>) {
    let Some(level) = opts.own_process else {
        return;
    };
    let serve_thread = std::thread::current().id();
    panic::set_hook(Box::new(move |info| {
        let loc = info.location().map(|l| Location {
            file: l.file().to_owned(),
            line: l.line(),
            column: l.column(),
        });
        if std::thread::current().id() == serve_thread {
            // Silent: the caller receives the message and the location.
            LAST_PANIC.with(|p| *p.borrow_mut() = loc);
            return;
        }
        // A thread a task started: nobody catches this for a caller,
        // so it goes to the log, which the parent receives.
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let payload = info.payload();
        let message = match (
            payload.downcast_ref::<&str>(),
            payload.downcast_ref::<String>(),
        ) {
            (Some(s), _) => s,
            (_, Some(s)) => s.as_str(),
            _ => "a non-string payload",
        };
        let at = loc
            .as_ref()
            .map(|l| format!(" at {}:{}:{}", l.file, l.line, l.column))
            .unwrap_or_default();
        if log::max_level() >= log::LevelFilter::Error {
            log::logger().log(
                &log::Record::builder()
                    .level(log::Level::Error)
                    .target(module_path!())
                    .file(loc.as_ref().map(|l| l.file.as_str()))
                    .line(loc.as_ref().map(|l| l.line))
                    .args(format_args!("thread `{name}` panicked{at}: {message}"))
                    .build(),
            );
        } else {
            // Logging is off: leave the trace the default hook would.
            eprintln!(
                "procpool worker {}: thread `{name}` panicked{at}: {message}",
                std::process::id()
            );
        }
    }));
    if level != log::LevelFilter::Off {
        let forward = ForwardLogger {
            output: output.clone(),
            max_frame: opts.max_frame,
        };
        // A program that set its own logger before serve_if_worker
        // keeps it.
        if log::set_boxed_logger(Box::new(forward)).is_ok() {
            log::set_max_level(level);
        }
    }
}

/// Sends the preamble and `Hello`, then reads and checks the parent's
/// preamble. `Err(code)`: the worker ends with that code (0 if the parent
/// went away first).
pub(super) fn handshake(
    registry: &Registry,
    output: &Mutex<std::fs::File>,
    input: &mut impl Read,
    max_frame: u32,
) -> Result<(), i32> {
    let mut out = Vec::with_capacity(4 << 10);
    out.extend_from_slice(&preamble());
    let hello = Hello {
        build_id: concat!("procpool ", env!("CARGO_PKG_VERSION")).to_owned(),
        pid: std::process::id(),
        tasks: registry.infos(),
    };
    if encode_hello(&mut out, &hello, max_frame).is_err() {
        eprintln!("procpool worker: its task list does not fit in one frame");
        return Err(exit_code::SETUP_FAILED);
    }
    if output.lock().write_all(&out).is_err() {
        return Err(exit_code::STREAM_BROKEN);
    }
    let mut theirs = [0u8; PREAMBLE_LEN];
    if let Err(e) = input.read_exact(&mut theirs) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Err(0); // The pool went away before it said anything.
        }
        return Err(bad_parent(&format!(
            "cannot read the parent's preamble: {e}"
        )));
    }
    if let Err(e) = check_preamble(&theirs) {
        return Err(bad_parent(&e.to_string()));
    }
    Ok(())
}

/// A worker's life after its hooks are set: the handshake, then batches
/// until the parent closes the input. `state`: what a zygote's initializer
/// made before this worker was forked from it.
pub(super) fn serve_loop(
    registry: &Registry,
    input: std::fs::File,
    output: Arc<Mutex<std::fs::File>>,
    progress: Option<&SharedCounter>,
    max_frame: u32,
    share: bool,
    state: Option<WorkerState>,
) -> i32 {
    // Before the handshake: the pool may trust the counter from then on.
    if let Some(p) = progress {
        p.attach(crate::payload::key().is_some());
    }
    // Large arguments' mappings dropped while serving are unmapped once
    // the answer is sent (`Server::send`).
    crate::sys::defer_unmaps();
    // Reads spin briefly before they sleep (`sys::SpinRead`): whoever
    // feeds the worker, a direct-lane caller or the pool's loop, its next
    // frame is usually on its way.
    let input = match crate::sys::SpinRead::new(input, progress) {
        Ok(input) => input,
        Err(e) => {
            eprintln!(
                "procpool worker {}: cannot set up its input: {e}",
                std::process::id()
            );
            return exit_code::SETUP_FAILED;
        }
    };
    let mut input = BufReader::with_capacity(64 << 10, input);
    if let Err(code) = handshake(registry, &output, &mut input, max_frame) {
        return code;
    }
    let mut server = Server::new(registry, progress, output, max_frame);
    server.state = state;
    payload::set_worker_shares(share);
    let mut frame = Vec::new();
    loop {
        match read_frame(&mut input, max_frame, &mut frame) {
            Ok(true) => {}
            Ok(false) => return 0,
            Err(e) => return bad_parent(&e.to_string()),
        }
        // The hot message first, read in place; the others as derived.
        let sent = match decode_run(&frame) {
            Ok(Some(run)) => server.run(run.batch, run.task, run.eager, run.count, run.items()),
            Ok(None) => match decode_to_worker(&frame) {
                Ok(msg) => server.serve_other(msg),
                Err(e) => return bad_parent(&e.to_string()),
            },
            Err(e) => return bad_parent(&e.to_string()),
        };
        match sent {
            Ok(()) => {}
            Err(Stop(code)) => return code,
        }
    }
}

impl Server<'_> {
    /// A message other than `Run`.
    fn serve_other(&mut self, msg: ToWorker<'_>) -> Result<(), Stop> {
        match msg {
            ToWorker::Init { task, arg } => self.init(task, arg),
            ToWorker::Run(run) => self.run(
                run.batch,
                run.task,
                run.eager,
                run.items.len() as u32,
                run.items.iter().map(|b| &b[..]),
            ),
            ToWorker::Fork { .. } | ToWorker::Reap { .. } => Err(Stop(bad_parent(
                "a worker got a message meant for a zygote",
            ))),
            ToWorker::Kill | ToWorker::Cancel { .. } | ToWorker::Go { .. } => {
                Err(Stop(bad_parent("a worker got a message meant for a relay")))
            }
        }
    }
}

pub(super) fn bad_parent(why: &str) -> i32 {
    eprintln!(
        "procpool worker {}: malformed message from the parent: {why}",
        std::process::id()
    );
    exit_code::BAD_PARENT_MESSAGE
}

/// Ends the serve loop with an exit code.
pub(super) struct Stop(pub(super) i32);

pub(super) struct Server<'r> {
    registry: &'r Registry,
    /// What the initializer made, if it makes state: dropped with the
    /// server, when the serve loop ends.
    state: Option<WorkerState>,
    /// Where the pool reads how many items this worker has started: after
    /// a death it knows exactly which item was running.
    progress: Option<&'r SharedCounter>,
    /// Items started so far (not counting the initializer).
    started: u64,
    /// `Run` frames received so far: the number of the next one.
    runs: u64,
    output: Arc<Mutex<std::fs::File>>,
    max_frame: u32,
    /// The frame being written.
    out: Vec<u8>,
    /// Outcomes of the current batch not yet sent, encoded back to back.
    outcomes: Vec<u8>,
    /// The initializer's outcome.
    scratch: Vec<u8>,
    /// `Shared` messages sent so far.
    shared_sent: u64,
    /// The memfds of each `Shared` message (by number) the pool has not
    /// said it took.
    held: VecDeque<(u64, Vec<OwnedFd>)>,
}

impl<'r> Server<'r> {
    pub(super) fn new(
        registry: &'r Registry,
        progress: Option<&'r SharedCounter>,
        output: Arc<Mutex<std::fs::File>>,
        max_frame: u32,
    ) -> Self {
        Server {
            registry,
            state: None,
            progress,
            started: 0,
            runs: 0,
            output,
            max_frame,
            out: Vec::with_capacity(64 << 10),
            outcomes: Vec::with_capacity(64 << 10),
            scratch: Vec::new(),
            shared_sent: 0,
            held: VecDeque::new(),
        }
    }

    /// Takes the state the initializer made (a forked worker takes the
    /// zygote's copy).
    pub(super) fn take_state(&mut self) -> Option<WorkerState> {
        self.state.take()
    }

    pub(super) fn init(&mut self, task: u32, arg: &Bytes) -> Result<(), Stop> {
        match self.registry.state_use(task as usize) {
            None => {
                return Err(Stop(bad_parent(&format!(
                    "initializer task {task} does not exist"
                ))));
            }
            Some(StateUse::Takes(_)) => {
                return Err(Stop(bad_parent(&format!(
                    "task {task} takes state, so it cannot be the initializer"
                ))));
            }
            Some(StateUse::None | StateUse::Makes(_)) => {}
        }
        let limit = self.limit();
        self.scratch.clear();
        run_item(
            self.registry,
            task as usize,
            &mut self.state,
            arg,
            &mut self.scratch,
            limit,
        );
        let (outcome, _) = postcard::take_from_bytes::<Outcome<'_>>(&self.scratch)
            .expect("run_item writes one outcome");
        self.out.clear();
        encode_init_done(&mut self.out, &outcome, self.max_frame)
            .map_err(|_| Stop(exit_code::STREAM_BROKEN))?;
        self.send()
    }

    fn run<'i>(
        &mut self,
        batch: u64,
        task: u32,
        eager: bool,
        count: u32,
        items: impl Iterator<Item = &'i [u8]>,
    ) -> Result<(), Stop> {
        // Validate the whole message before running anything of it.
        match self.registry.state_use(task as usize) {
            None => return Err(Stop(bad_parent(&format!("task {task} does not exist")))),
            Some(StateUse::Makes(_)) => {
                return Err(Stop(bad_parent(&format!(
                    "task {task} is an initializer, which runs only as one"
                ))));
            }
            Some(StateUse::None | StateUse::Takes(_)) => {}
        }
        let limit = self.limit();
        let mut pending: u32 = 0;
        // A batch of one item is answered when it ends: no clock needed.
        let mut last_flush = (count > 1).then(Instant::now);
        // Reading the clock costs more than a tiny task: look at it every
        // `stride` items, doubling the stride while items are fast and
        // back to every item as soon as they are not.
        let (mut stride, mut since_check) = (1u32, 0u32);
        let run = self.runs;
        self.runs += 1;
        for (k, item) in items.enumerate() {
            self.started += 1;
            // Started or skipped, an item counts: the pool's stream index
            // of every item stays the worker's count. A batch's first item,
            // and every item of an eager batch (one with a deadline, whose
            // worker a kill may follow), is claimed against the pool's halt
            // mark (see `sys::shm`).
            let skip = match self.progress {
                Some(p) if k == 0 || eager => {
                    if !p.claim(self.started) {
                        return Err(Stop(exit_code::HALTED));
                    }
                    p.skipped(run)
                }
                Some(p) => {
                    p.store(self.started);
                    p.skipped(run)
                }
                None => false,
            };
            let before = self.outcomes.len();
            let made_before = payload::made();
            if skip {
                push_outcome(&mut self.outcomes, &Outcome::Cancelled);
            } else {
                run_item(
                    self.registry,
                    task as usize,
                    &mut self.state,
                    item,
                    &mut self.outcomes,
                    limit,
                );
            }
            if count > 1 {
                // Only a batch of one item puts its unmaps off until its
                // answer: in a chunk, the next answer may be the whole
                // chunk away, and the mappings of its items would add up
                // (past a worker's memory limit, too).
                crate::sys::unmap_deferred();
            }
            if self.outcomes.len() > limit && pending > 0 {
                // This outcome does not fit beside the pending ones: send
                // those first, then keep this one alone.
                // Its shared payloads (if any) go with it.
                let this = self.outcomes.split_off(before);
                let its_payloads = payload::take_made(made_before);
                self.flush(batch, pending)?;
                payload::restore_made(its_payloads);
                self.outcomes = this;
                pending = 0;
            }
            pending += 1;
            since_check += 1;
            // Many shared payloads pending: send them before the pool's
            // bound on descriptors per frame (`Conn`) is near.
            let due = if eager
                || self.outcomes.len() * 2 > limit
                || payload::made() >= payload::MAX_SHARED / 2
            {
                true
            } else if since_check >= stride
                && let Some(last) = last_flush
            {
                since_check = 0;
                let elapsed = last.elapsed();
                stride = if elapsed * 4 < FLUSH_INTERVAL {
                    (stride * 2).min(MAX_CLOCK_STRIDE)
                } else {
                    1
                };
                elapsed >= FLUSH_INTERVAL
            } else {
                false
            };
            if due {
                self.flush(batch, pending)?;
                pending = 0;
                last_flush = last_flush.map(|_| Instant::now());
            }
        }
        if pending > 0 || count == 0 {
            self.flush(batch, pending)?;
        }
        Ok(())
    }

    /// Largest outcomes body that still fits a frame.
    fn limit(&self) -> usize {
        (self.max_frame as usize).saturating_sub(DONE_HEADER_ROOM)
    }

    fn flush(&mut self, batch: u64, count: u32) -> Result<(), Stop> {
        self.list_shared()?;
        self.out.clear();
        encode_done(&mut self.out, batch, count, &self.outcomes, self.max_frame)
            .map_err(|_| Stop(exit_code::STREAM_BROKEN))?;
        self.outcomes.clear();
        self.send()
    }

    /// Sends a `Shared` message listing the memfds of the pending results
    /// (if any) ahead of their `Done` frame, and waits until the pool says
    /// it has opened them before that frame goes: once the `Done` frame
    /// is out, the results it names are the pool's, whatever becomes of
    /// this worker (its memfds would go with it). Then it closes its own.
    /// A pool that does not answer within [`TAKE_PATIENCE`] (stopped, or
    /// very busy) gets the frame anyway, and the memfds are closed once it
    /// has answered, at a later frame.
    fn list_shared(&mut self) -> Result<(), Stop> {
        let Some(page) = self.progress else {
            return Ok(());
        };
        let taken = page.shared_taken_count();
        while self.held.front().is_some_and(|(n, _)| *n < taken) {
            self.held.pop_front();
        }
        let fds = payload::take_made(0);
        if fds.is_empty() {
            return Ok(());
        }
        let numbers = fds.iter().map(|f| f.as_raw_fd() as u32).collect();
        let mut listing = Vec::new();
        encode_message(
            &mut listing,
            &FromWorker::Shared { fds: numbers },
            self.max_frame,
        )
        .map_err(|_| Stop(exit_code::STREAM_BROKEN))?;
        self.output
            .lock()
            .write_all(&listing)
            .map_err(|_| Stop(exit_code::STREAM_BROKEN))?;
        let seq = self.shared_sent;
        self.shared_sent += 1;
        if !wait_taken(page, seq + 1) {
            self.held.push_back((seq, fds));
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), Stop> {
        // A write error means the parent is gone: nothing left to serve.
        self.output
            .lock()
            .write_all(&self.out)
            .map_err(|_| Stop(exit_code::STREAM_BROKEN))?;
        // The answer is out: now the large arguments' mappings go.
        crate::sys::unmap_deferred();
        Ok(())
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        // However the loop ended (most often: the parent closed the input,
        // at join or recycling), the state's own clean-up runs before the
        // worker exits.
        super::state::drop_state(self.state.take());
    }
}

/// Forwards `log` records from task code to the parent, one frame each,
/// through the same (locked) protocol stream as the results.
struct ForwardLogger {
    output: Arc<Mutex<std::fs::File>>,
    max_frame: u32,
}

impl log::Log for ForwardLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let rec = LogRecord {
            level: record.level() as u8,
            target: record.target().to_owned(),
            message: record.args().to_string(),
            file: record.file().map(str::to_owned),
            line: record.line(),
        };
        let mut frame = Vec::new();
        if encode_log(&mut frame, &rec, self.max_frame).is_ok() {
            // A write error means the parent is gone; the serve loop will
            // notice on its own.
            let _ = self.output.lock().write_all(&frame);
        }
    }

    fn flush(&self) {}
}

/// How long a worker waits for the pool to take its shared results.
const TAKE_PATIENCE: Duration = Duration::from_secs(2);

/// Waits until the pool has taken `n` `Shared` messages (word 4 of the
/// progress page): a short spin, then a sleep on the word, which the pool
/// wakes when it stores it. `false` if [`TAKE_PATIENCE`] passed first.
fn wait_taken(page: &SharedCounter, n: u64) -> bool {
    let mut spin = crate::sys::Spin::default();
    if spin
        .run(|| (page.shared_taken_count() >= n).then_some(()))
        .is_some()
    {
        return true;
    }
    page.wait_shared_taken(n, TAKE_PATIENCE)
}

/// An outcome's own header (variant and length) takes at most this.
const OUTCOME_ROOM: usize = 16;

/// Runs one item, catching a panic, and appends its outcome to `out` (as
/// [`push_outcome`] would): a result is encoded straight into `out`, with
/// no scratch buffer and no copy. Results whose outcome would not fit in
/// `limit` (a frame's room for outcomes) become an encode error for this
/// item only. Inlined into the serve loop; all but a result that fits is
/// handled out of line, in [`fail_item`].
#[inline]
fn run_item(
    registry: &Registry,
    task: usize,
    state: &mut Option<WorkerState>,
    arg: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) {
    let start = out.len();
    let made_before = payload::made();
    // `Outcome::Ok`'s variant; the runner appends the length and bytes.
    out.push(0);
    let result = panic::catch_unwind(AssertUnwindSafe(|| registry.run(task, state, arg, out)));
    if let Ok(Some(Ok(len))) = result
        && len + OUTCOME_ROOM <= limit
    {
        return;
    }
    fail_item(result, out, start, made_before, limit);
}

/// The rest of [`run_item`] when the item did not end with a result that
/// fits: its outcome replaces whatever the runner wrote.
#[cold]
#[inline(never)]
fn fail_item(
    result: std::thread::Result<Option<Result<usize, ItemError>>>,
    out: &mut Vec<u8>,
    start: usize,
    made_before: usize,
    limit: usize,
) {
    let failed = match result {
        Ok(Some(Ok(len))) if len + OUTCOME_ROOM > limit => {
            // Name the limit the user configured, not the room left in it.
            Outcome::OutputEncode(format!(
                "the result encodes to {len} bytes, more than fits in a frame: the frame limit \
                 of {} bytes (Builder::max_frame) holds a result of at most {} bytes",
                limit + DONE_HEADER_ROOM,
                limit.saturating_sub(OUTCOME_ROOM)
            ))
        }
        Ok(Some(Ok(_))) => unreachable!("a result that fits returned above"),
        Ok(Some(Err(ItemError::ArgDecode(m)))) => Outcome::ArgDecode(m),
        Ok(Some(Err(ItemError::OutputEncode(m)))) => Outcome::OutputEncode(m),
        // The parent refuses such a call at submit; should one come, the
        // item fails, as a task that could not run (there is no outcome
        // of its own for it).
        Ok(Some(Err(ItemError::NoState(message)))) => Outcome::Panicked {
            message,
            location: None,
        },
        Ok(None) => unreachable!("task index checked by the caller"),
        Err(payload) => {
            let message = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "panic with a non-string payload".to_owned()
            };
            let location = LAST_PANIC.with(|p| p.borrow_mut().take());
            // Drop the payload here: a payload whose Drop panics would
            // otherwise escape (and abort) outside catch_unwind.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Outcome::Panicked { message, location }
        }
    };
    // Whatever the runner wrote before it failed goes, with any payload
    // it had put in shared memory.
    out.truncate(start);
    drop(payload::take_made(made_before));
    push_outcome(out, &failed);
}

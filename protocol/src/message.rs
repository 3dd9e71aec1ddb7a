//! The messages, and the hand-built encoders for the two hot ones (`Run`
//! and `Done`), which append to a reused buffer without an intermediate
//! `Vec` per item. Their byte layout is exactly postcard's encoding of the
//! derived types below; the tests hold the two together.

use serde::{Deserialize, Serialize};
use serde_bytes::Bytes;

use crate::error::{DecodeError, PreambleError};
use crate::frame::{FrameError, finish_frame, start_frame};
use crate::varint;

/// The first eight bytes either side sends.
pub const MAGIC: [u8; 8] = *b"PROCPOOL";

/// The version of this protocol; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 6;

/// Bytes of the preamble: magic then version.
pub const PREAMBLE_LEN: usize = 12;

/// The preamble this side sends: [`MAGIC`] then [`PROTOCOL_VERSION`] (LE).
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0; PREAMBLE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    p
}

/// Checks a peer's preamble.
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<(), PreambleError> {
    if bytes[..8] != MAGIC {
        return Err(PreambleError::NotProcpool {
            head: bytes.to_vec(),
        });
    }
    let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if found != PROTOCOL_VERSION {
        return Err(PreambleError::Version {
            found,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// One task a worker serves, as announced in its [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task's name, by which the parent refers to it.
    pub name: String,
    /// The Rust type name of its argument, for a signature check.
    pub arg_type: String,
    /// The Rust type name of its result, for a signature check.
    pub output_type: String,
    /// What it does with the worker's state.
    pub state: StateUse,
}

/// What a task does with its worker's state: the value a state-making
/// initializer returned, kept in the worker for the tasks that take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateUse {
    /// A plain task: it takes no state.
    #[default]
    None,
    /// A task that takes the worker's state, of this Rust type, as its
    /// first parameter; it runs only in a worker that holds such state.
    Takes(String),
    /// An initializer whose result becomes the worker's state, of this
    /// Rust type. It runs as an initializer only, never as a task.
    Makes(String),
}

/// The worker's first frame: who it is and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Free-form identity of the worker's build (crate versions).
    pub build_id: String,
    /// The worker's process id, as it sees it.
    pub pid: u32,
    /// The tasks it serves; a task's index here is its id in [`Run`].
    pub tasks: Vec<TaskInfo>,
}

/// Where a panic happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Source file.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<'a> {
    /// The task returned; its encoded result.
    #[serde(borrow)]
    Ok(&'a Bytes),
    /// The task panicked.
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
        /// Where it panicked, when known.
        location: Option<Location>,
    },
    /// The argument could not be decoded as the task's argument type.
    ArgDecode(String),
    /// The task's result could not be encoded.
    OutputEncode(String),
    /// The item was not run: its caller cancelled it before the worker
    /// reached it.
    Cancelled,
}

/// A batch of items for one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run<'a> {
    /// The parent's id for this batch; echoed in [`Done`].
    pub batch: u64,
    /// Index of the task in the worker's [`Hello::tasks`].
    pub task: u32,
    /// Report each item's outcome before starting the next one (instead of
    /// batching outcomes for up to 20 ms). The parent asks for it when it
    /// must know exactly which item is running: for deadlines, and for
    /// re-dispatching the items a dead worker never started.
    pub eager: bool,
    /// Each item's encoded argument.
    #[serde(borrow)]
    pub items: Vec<&'a Bytes>,
}

/// Messages from parent to worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker<'a> {
    /// Run the initializer task once, before any batch.
    Init {
        /// Index of the task in [`Hello::tasks`].
        task: u32,
        /// Its encoded argument.
        #[serde(borrow)]
        arg: &'a Bytes,
    },
    /// Run a batch.
    #[serde(borrow)]
    Run(Run<'a>),
    /// To a zygote: fork a worker, number `index` in the pool. The frame
    /// carries three descriptors (`SCM_RIGHTS`): the worker's input, its
    /// output and its progress counter.
    Fork {
        /// The worker's index in the pool.
        index: u32,
    },
    /// To a zygote: reap worker `pid`, which has exited or was sent
    /// SIGKILL, and say how it ended.
    Reap {
        /// A pid the zygote reported in [`FromWorker::Forked`].
        pid: u32,
    },
    /// To a relay (the far side of a remote worker): end the worker now —
    /// halt it, SIGTERM its group and tree, SIGKILL after the grace the
    /// relay was started with — and report how it ended
    /// ([`FromWorker::Exited`]). The relay consumes this frame; the worker
    /// never sees it.
    Kill,
    /// To a relay: the pool's `run`-th `Run` frame to this worker belongs
    /// to a cancelled job. The relay sets its skip bit (the worker reports
    /// the items it reaches after that as cancelled, unrun) and, if the
    /// worker is running one of its items, kills it as for
    /// [`ToWorker::Kill`]. The worker never sees this frame.
    Cancel {
        /// The `Run` frame's number, counted from 0 on this worker.
        run: u64,
    },
    /// To a relay: the worker may start `Run` frame `run`. A relay holds
    /// each `Run` frame until the pool says so, and the pool says so only
    /// once the frames before it are answered (or at once, when none is
    /// out): so a frame the pool never said "go" for provably never
    /// started, and its items can run elsewhere if the host is lost.
    Go {
        /// The `Run` frame's number, counted from 0 on this worker.
        run: u64,
    },
}

/// The first byte of a [`ToWorker::Kill`] frame's body (and its whole
/// body): a relay recognises the frame by it without decoding the others.
pub const KILL_TAG: u8 = 4;

/// The first byte of a [`ToWorker::Cancel`] frame's body.
pub const CANCEL_TAG: u8 = 5;

/// The first byte of a [`ToWorker::Go`] frame's body.
pub const GO_TAG: u8 = 6;

/// The first byte of a [`ToWorker::Run`] frame's body.
pub const RUN_TAG: u8 = 1;

/// How a process ended, as its parent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReport {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// Its parent could not tell.
    Unknown,
}

/// Why a zygote did not fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotForked {
    /// The zygote has more than one thread (this many): a fork would copy
    /// locks other threads may hold. It never forks again.
    Threads(u32),
    /// `fork` (or what must precede it) failed.
    Failed(String),
}

/// The outcomes of one batch, in the order of its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done<'a> {
    /// The batch id from [`Run::batch`].
    pub batch: u64,
    /// One outcome per item.
    #[serde(borrow)]
    pub outcomes: Vec<Outcome<'a>>,
}

/// Messages from worker to parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker<'a> {
    /// The handshake; always the first frame.
    Hello(Hello),
    /// The initializer's outcome. A state-making initializer
    /// ([`StateUse::Makes`]) keeps its result in the worker and answers
    /// with an encoded `Result<(), String>`: whether it made the state.
    #[serde(borrow)]
    InitDone(Outcome<'a>),
    /// A batch's outcomes.
    Done(Done<'a>),
    /// A `log` record emitted by task code in the worker.
    Log(LogRecord),
    /// A zygote forked a worker: its pid, with a pidfd for it attached
    /// (`SCM_RIGHTS`).
    Forked {
        /// The new worker's pid.
        pid: u32,
    },
    /// A zygote did not fork.
    NotForked(NotForked),
    /// A zygote reaped a worker.
    Reaped {
        /// The worker's pid.
        pid: u32,
        /// How it ended.
        exit: ExitReport,
    },
    /// Large results of the next `Done` frame are in sealed memfds: the
    /// worker's descriptor numbers, for the pool to open (through
    /// `/proc/<pid>/fd/<n>`) before the worker closes them.
    Shared {
        /// The worker's descriptors.
        fds: Vec<u32>,
    },
    /// From a relay: its worker has ended, and this is how. Always the
    /// relay's last frame.
    Exited {
        /// How the worker ended, as the relay (its parent) reaped it.
        exit: ExitReport,
        /// How many items the worker had started (its progress counter).
        started: u64,
        /// What its counter said when the relay halted it for a
        /// [`ToWorker::Kill`], if it did.
        halted_at: Option<u64>,
    },
    /// From a relay that did not start its worker: why (another build at
    /// the path, a spawn failure). Its last frame.
    Refused {
        /// The reason, for the pool's error.
        reason: String,
    },
}

/// A `log` record forwarded from a worker to the parent's logger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// `log::Level` as a number: 1 (error) to 5 (trace).
    pub level: u8,
    /// The record's target.
    pub target: String,
    /// The formatted message.
    pub message: String,
    /// Source file, when known.
    pub file: Option<String>,
    /// Source line, when known.
    pub line: Option<u32>,
}

/// Variant indices, as postcard writes them.
const TO_WORKER_INIT: u64 = 0;
const TO_WORKER_RUN: u64 = 1;
const FROM_WORKER_DONE: u64 = 2;

/// Decodes a frame body sent by the parent.
pub fn decode_to_worker(body: &[u8]) -> Result<ToWorker<'_>, DecodeError> {
    decode_exact(body, "parent")
}

/// Decodes a frame body sent by a worker.
pub fn decode_from_worker(body: &[u8]) -> Result<FromWorker<'_>, DecodeError> {
    decode_exact(body, "worker")
}

/// A `FromWorker::Done` message, validated but not collected: its
/// outcomes stay encoded in the frame until [`outcomes`](Self::outcomes)
/// walks them, so the hot path allocates nothing per frame.
#[derive(Debug, Clone, Copy)]
pub struct DoneView<'a> {
    /// The batch id.
    pub batch: u64,
    /// How many outcomes the frame holds.
    pub count: u32,
    outcomes: &'a [u8],
}

impl<'a> DoneView<'a> {
    /// The outcomes, in item order.
    pub fn outcomes(&self) -> impl Iterator<Item = Outcome<'a>> + 'a {
        let mut rest = self.outcomes;
        (0..self.count).map(move |_| {
            let (o, r) = take_outcome(rest).expect("validated by decode_done");
            rest = r;
            o
        })
    }

    /// Calls `f` with each outcome after the first `skip`, in item order:
    /// `Ok(bytes)` for a result, `Err(outcome)` for any other. A caller's
    /// hot loop: a result reaches `f` straight from the frame's bytes,
    /// with no [`Outcome`] built and matched on the way (that took a
    /// jump table and a dozen moves per item).
    #[inline]
    pub fn each_from(&self, skip: u32, mut f: impl FnMut(Result<&'a [u8], Outcome<'a>>)) {
        let mut rest = self.outcomes;
        for i in 0..self.count {
            let outcome = if let Some((bytes, r)) = short_ok(rest) {
                rest = r;
                Ok(bytes)
            } else {
                let (o, r) = take_outcome_slow(rest).expect("validated by decode_done");
                rest = r;
                match o {
                    Outcome::Ok(bytes) => Ok(bytes.as_ref()),
                    other => Err(other),
                }
            };
            // One call of `f`, so it inlines here.
            if i >= skip {
                f(outcome);
            }
        }
    }
}

/// Variant index of `Outcome::Ok`.
const OUTCOME_OK: u32 = 0;

/// Decodes one [`Outcome`] from the front of `buf`: `Ok` (nearly every
/// outcome) by hand, the rest through postcard; the same bytes either way.
#[inline]
fn take_outcome(buf: &[u8]) -> Result<(Outcome<'_>, &[u8]), postcard::Error> {
    if let Some((bytes, rest)) = short_ok(buf) {
        return Ok((Outcome::Ok(Bytes::new(bytes)), rest));
    }
    take_outcome_slow(buf)
}

/// The hottest outcome, read by hand in every walk over a frame (the
/// dispatcher's check, the caller's decoding): `Ok` with a result under
/// 128 bytes, its variant and its length one byte each. Its result's bytes
/// and what follows; `None` for any other outcome (or a short buffer).
#[inline(always)]
fn short_ok(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    match buf {
        [0, len @ 0..=0x7f, rest @ ..] => rest.split_at_checked(usize::from(*len)),
        _ => None,
    }
}

/// What follows one outcome at the front of `buf`, checked as
/// [`take_outcome`] checks it, without building the outcome: the
/// dispatcher's walk over every `Done` frame.
#[inline]
fn skip_outcome(buf: &[u8]) -> Result<&[u8], postcard::Error> {
    if let Some((_, rest)) = short_ok(buf) {
        return Ok(rest);
    }
    Ok(take_outcome_slow(buf)?.1)
}

/// [`take_outcome`] past its fast case.
#[inline(never)]
fn take_outcome_slow(buf: &[u8]) -> Result<(Outcome<'_>, &[u8]), postcard::Error> {
    // Variant indices follow postcard's u32 varint rule, lengths its usize
    // (u64) rule: the same bytes are accepted as by the derived decoder.
    if let Some((OUTCOME_OK, n)) = varint::get_u32(buf)
        && let Some((len, m)) = varint::get(&buf[n..])
    {
        let start = n + m;
        if let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l))
            && end <= buf.len()
        {
            return Ok((Outcome::Ok(Bytes::new(&buf[start..end])), &buf[end..]));
        }
    }
    postcard::take_from_bytes::<Outcome<'_>>(buf)
}

/// Reads the header of a `Done` body that [`decode_done`] already
/// accepted (the parent's dispatcher validates, the caller decodes), without
/// walking its outcomes again. `None` if it is not a `Done` header.
pub fn done_header(body: &[u8]) -> Option<DoneView<'_>> {
    let (tag, n) = varint::get_u32(body)?;
    if u64::from(tag) != FROM_WORKER_DONE {
        return None;
    }
    let (batch, m) = varint::get(&body[n..])?;
    let (count, k) = varint::get(&body[n + m..])?;
    Some(DoneView {
        batch,
        count: u32::try_from(count).ok()?,
        outcomes: &body[n + m + k..],
    })
}

/// Decodes a worker's frame body if it is a `Done` message (`Ok(None)` if
/// it is another message), checking every outcome and that nothing
/// trails, without collecting them.
pub fn decode_done(body: &[u8]) -> Result<Option<DoneView<'_>>, DecodeError> {
    let malformed = |source| DecodeError::Malformed {
        what: "worker",
        source,
    };
    let Some((tag, n)) = varint::get_u32(body) else {
        // Not a valid variant index: let the derived decoder say why.
        return Ok(None);
    };
    if u64::from(tag) != FROM_WORKER_DONE {
        return Ok(None);
    }
    let rest = &body[n..];
    let (batch, rest) = postcard::take_from_bytes::<u64>(rest).map_err(malformed)?;
    let (count, outcomes) = check_sequence(rest, "worker", skip_outcome)?;
    Ok(Some(DoneView {
        batch,
        count,
        outcomes,
    }))
}

/// A `ToWorker::Run` message, validated but not collected: its items stay
/// encoded in the frame until [`items`](Self::items) walks them, so the
/// worker's hot path allocates nothing per frame.
#[derive(Debug, Clone, Copy)]
pub struct RunView<'a> {
    /// The batch id.
    pub batch: u64,
    /// Index of the task in the worker's [`Hello::tasks`].
    pub task: u32,
    /// See [`Run::eager`].
    pub eager: bool,
    /// How many items the frame holds.
    pub count: u32,
    items: &'a [u8],
}

impl<'a> RunView<'a> {
    /// Each item's encoded argument, in order.
    pub fn items(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = self.items;
        (0..self.count).map(move |_| {
            let (item, r) = take_item(rest).expect("validated by decode_run");
            rest = r;
            item
        })
    }
}

/// One item (a byte string) from the front of `buf`.
#[inline]
fn take_item(buf: &[u8]) -> Result<(&[u8], &[u8]), postcard::Error> {
    if let [len @ 0..=0x7f, rest @ ..] = buf
        && let Some(split) = rest.split_at_checked(usize::from(*len))
    {
        return Ok(split);
    }
    let (item, rest) = postcard::take_from_bytes::<&Bytes>(buf)?;
    Ok((item, rest))
}

/// Decodes a parent's frame body if it is a `Run` message (`Ok(None)` if
/// it is another message), checking every item and that nothing trails,
/// without collecting them: the same frames are accepted as by
/// [`decode_to_worker`].
pub fn decode_run(body: &[u8]) -> Result<Option<RunView<'_>>, DecodeError> {
    let malformed = |source| DecodeError::Malformed {
        what: "parent",
        source,
    };
    let Some((tag, n)) = varint::get_u32(body) else {
        return Ok(None);
    };
    if u64::from(tag) != TO_WORKER_RUN {
        return Ok(None);
    }
    let rest = &body[n..];
    let (batch, rest) = postcard::take_from_bytes::<u64>(rest).map_err(malformed)?;
    let (task, rest) = postcard::take_from_bytes::<u32>(rest).map_err(malformed)?;
    let (eager, rest) = postcard::take_from_bytes::<bool>(rest).map_err(malformed)?;
    let (count, items) = check_sequence(rest, "parent", |b| Ok(take_item(b)?.1))?;
    Ok(Some(RunView {
        batch,
        task,
        eager,
        count,
        items,
    }))
}

/// The tail of a `Done` or `Run` body: a sequence's length, then that many
/// entries, each read by `take`, and nothing after them. Returns the
/// length and the entries' bytes, checked but not collected.
fn check_sequence<'a>(
    rest: &'a [u8],
    what: &'static str,
    skip: impl Fn(&'a [u8]) -> Result<&'a [u8], postcard::Error>,
) -> Result<(u32, &'a [u8]), DecodeError> {
    let malformed = |source| DecodeError::Malformed { what, source };
    // A sequence length is a usize for postcard; more than u32::MAX
    // entries cannot fit any frame.
    let (count, entries) = postcard::take_from_bytes::<usize>(rest).map_err(malformed)?;
    let count =
        u32::try_from(count).map_err(|_| malformed(postcard::Error::DeserializeBadVarint))?;
    let mut walk = entries;
    for _ in 0..count {
        walk = skip(walk).map_err(malformed)?;
    }
    if !walk.is_empty() {
        return Err(DecodeError::Trailing {
            what,
            extra: walk.len(),
        });
    }
    Ok((count, entries))
}

fn decode_exact<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    let (msg, rest) = postcard::take_from_bytes(body)
        .map_err(|source| DecodeError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing {
            what,
            extra: rest.len(),
        });
    }
    Ok(msg)
}

/// Appends one frame holding `FromWorker::Hello` to `out`.
pub fn encode_hello(out: &mut Vec<u8>, hello: &Hello, max: u32) -> Result<(), FrameError> {
    let at = start_frame(out);
    push_message(out, &FromWorker::Hello(hello.clone()));
    finish_frame(out, at, max)
}

/// Appends one frame holding `FromWorker::InitDone` to `out`.
pub fn encode_init_done(
    out: &mut Vec<u8>,
    outcome: &Outcome<'_>,
    max: u32,
) -> Result<(), FrameError> {
    let at = start_frame(out);
    push_message(out, &FromWorker::InitDone(outcome.clone()));
    finish_frame(out, at, max)
}

/// Appends one frame holding a message sent by a zygote, or to one (the
/// cold messages of the zygote's control channel), to `out`.
pub fn encode_message<M: Serialize>(
    out: &mut Vec<u8>,
    msg: &M,
    max: u32,
) -> Result<(), FrameError> {
    let at = start_frame(out);
    push_message(out, msg);
    finish_frame(out, at, max)
}

/// Appends one frame holding `FromWorker::Log` to `out`.
pub fn encode_log(out: &mut Vec<u8>, record: &LogRecord, max: u32) -> Result<(), FrameError> {
    let at = start_frame(out);
    push_message(out, &FromWorker::Log(record.clone()));
    finish_frame(out, at, max)
}

/// Appends the postcard encoding of one [`Outcome`] to `out`, for the
/// outcomes body of [`encode_done`].
pub fn push_outcome(out: &mut Vec<u8>, outcome: &Outcome<'_>) {
    match outcome {
        // The hot case, by hand: the variant index, then the byte string.
        Outcome::Ok(bytes) => {
            varint::put(out, u64::from(OUTCOME_OK));
            varint::put(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        other => push_message(out, other),
    }
}

fn push_message<T: Serialize>(out: &mut Vec<u8>, msg: &T) {
    let buf = std::mem::take(out);
    // Our message types hold only strings, integers, byte strings and
    // sequences of known length: encoding them into a Vec cannot fail.
    *out = postcard::to_extend(msg, buf).expect("protocol messages always encode");
}

/// Items of a batch being built: each item's encoded argument with its
/// length, back to back.
#[derive(Debug, Default, Clone)]
pub struct ItemsBuilder {
    body: Vec<u8>,
    count: u32,
    /// Where the last item (its length) starts in `body`.
    last: usize,
}

impl ItemsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one item's encoded bytes.
    pub fn push(&mut self, item: &[u8]) {
        self.last = self.body.len();
        varint::put(&mut self.body, item.len() as u64);
        self.body.extend_from_slice(item);
        self.count += 1;
    }

    /// Encodes `value` as the next item, straight into the body (see
    /// [`push_prefixed`](crate::value::push_prefixed)); returns its
    /// encoded length. On an error nothing is added.
    #[inline]
    pub fn push_value<T: Serialize + ?Sized>(&mut self, value: &T) -> postcard::Result<usize> {
        let at = self.body.len();
        let len = crate::value::push_prefixed(&mut self.body, value)?;
        self.last = at;
        self.count += 1;
        Ok(len)
    }

    /// Removes the last item and returns its encoded bytes (`None` if
    /// there are no items).
    pub fn pop_last(&mut self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        let (len, used) = varint::get(&self.body[self.last..]).expect("items were written by push");
        let item = self.body[self.last + used..][..len as usize].to_vec();
        self.body.truncate(self.last);
        self.count -= 1;
        self.last = self.start_of_last();
        Some(item)
    }

    /// Where the last item starts, found by walking the items.
    fn start_of_last(&self) -> usize {
        let (mut at, mut last) = (0, 0);
        for _ in 0..self.count {
            last = at;
            let (len, used) = varint::get(&self.body[at..]).expect("items were written by push");
            at += used + len as usize;
        }
        last
    }

    /// Items so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Encoded bytes so far.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Removes the first `n` items (all of them if there are fewer).
    pub fn drop_first(&mut self, n: u32) {
        let mut at = 0;
        let n = n.min(self.count);
        for _ in 0..n {
            let (len, used) = varint::get(&self.body[at..]).expect("items were written by push");
            at += used + len as usize;
        }
        self.body.drain(..at);
        self.count -= n;
        self.last = self.last.saturating_sub(at);
    }

    /// The encoded items, for [`encode_run`].
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Appends one frame holding `ToWorker::Run` of the given items to `out`.
pub fn encode_run(
    out: &mut Vec<u8>,
    batch: u64,
    task: u32,
    eager: bool,
    items: &ItemsBuilder,
    max: u32,
) -> Result<(), FrameError> {
    let at = start_frame(out);
    varint::put(out, TO_WORKER_RUN);
    varint::put(out, batch);
    varint::put(out, u64::from(task));
    out.push(u8::from(eager));
    varint::put(out, u64::from(items.count));
    out.extend_from_slice(&items.body);
    finish_frame(out, at, max)
}

/// Appends one frame holding `ToWorker::Init` to `out`.
pub fn encode_init(out: &mut Vec<u8>, task: u32, arg: &[u8], max: u32) -> Result<(), FrameError> {
    let at = start_frame(out);
    varint::put(out, TO_WORKER_INIT);
    varint::put(out, u64::from(task));
    varint::put(out, arg.len() as u64);
    out.extend_from_slice(arg);
    finish_frame(out, at, max)
}

/// Appends one frame holding `FromWorker::Done` to `out`, given the
/// outcomes already encoded back to back (each with
/// [`push_outcome`]), `count` of them.
pub fn encode_done(
    out: &mut Vec<u8>,
    batch: u64,
    count: u32,
    outcomes: &[u8],
    max: u32,
) -> Result<(), FrameError> {
    let at = start_frame(out);
    varint::put(out, FROM_WORKER_DONE);
    varint::put(out, batch);
    varint::put(out, u64::from(count));
    out.extend_from_slice(outcomes);
    finish_frame(out, at, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{DEFAULT_MAX_FRAME, read_frame};
    use proptest::prelude::*;

    fn body_of(frame: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        assert!(read_frame(&mut &frame[..], DEFAULT_MAX_FRAME, &mut buf).unwrap());
        buf
    }

    #[test]
    fn kill_is_one_byte_the_relay_recognises() {
        let mut out = Vec::new();
        encode_message(&mut out, &ToWorker::Kill, 64).unwrap();
        assert_eq!(out, [1, 0, 0, 0, KILL_TAG]);
        assert_eq!(decode_to_worker(&out[4..]).unwrap(), ToWorker::Kill);
        // No other message starts with that byte.
        let mut run = Vec::new();
        encode_message(&mut run, &ToWorker::Reap { pid: 4 }, 64).unwrap();
        assert_ne!(run[4], KILL_TAG);
        let mut cancel = Vec::new();
        encode_message(&mut cancel, &ToWorker::Cancel { run: 300 }, 64).unwrap();
        assert_eq!(cancel[4], CANCEL_TAG);
        let mut go = Vec::new();
        encode_message(&mut go, &ToWorker::Go { run: 300 }, 64).unwrap();
        assert_eq!(go[4], GO_TAG);
        let mut run = Vec::new();
        let items = ItemsBuilder::default();
        encode_run(&mut run, 9, 0, false, &items, 64).unwrap();
        assert_eq!(run[4], RUN_TAG);
    }

    #[test]
    fn preamble_checks() {
        check_preamble(&preamble()).unwrap();
        let mut garbage = [0u8; 12];
        garbage.copy_from_slice(b"Hello, world");
        let err = check_preamble(&garbage).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a procpool peer: its stream began with \"Hello, world\""
        );
        let mut other = preamble();
        other[8] = 99;
        assert_eq!(
            check_preamble(&other).unwrap_err(),
            PreambleError::Version {
                found: 99,
                ours: PROTOCOL_VERSION
            }
        );
    }

    #[test]
    fn hello_round_trip() {
        let hello = FromWorker::Hello(Hello {
            build_id: "x".into(),
            pid: 42,
            tasks: vec![TaskInfo {
                name: "a::b".into(),
                arg_type: "u64".into(),
                output_type: "()".into(),
                state: StateUse::Takes("app::Model".into()),
            }],
        });
        let FromWorker::Hello(h) = &hello else {
            unreachable!()
        };
        let mut out = Vec::new();
        encode_hello(&mut out, h, DEFAULT_MAX_FRAME).unwrap();
        let body = body_of(&out);
        assert_eq!(decode_from_worker(&body).unwrap(), hello);
    }

    #[test]
    fn fuzz_find_non_canonical_variant_index() {
        // Found by cargo-fuzz (from_worker): a Done whose outcome variant
        // index took six bytes. postcard's u32 rule refuses it; the fast
        // path used the u64 rule and accepted it. Both refuse it now.
        let body = [
            0x02, 0x2f, 0x07, 0x80, 0x80, 0x00, 0x00, 0x80, 0x80, 0x80, 0x00, 0x00, 0x80, 0x80,
            0x80, 0x00, 0x00, 0x80, 0x80, 0x00, 0x80, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            0x00, 0x00, 0x80, 0x80, 0x80, 0x00, 0x00, 0x80, 0x00,
        ];
        assert!(decode_from_worker(&body).is_err());
        assert!(!matches!(decode_done(&body), Ok(Some(_))));
    }

    #[test]
    fn outcomes_encode_as_postcard_does() {
        let cases = [
            Outcome::Ok(Bytes::new(&[])),
            Outcome::Ok(Bytes::new(&[1, 2, 3])),
            Outcome::Ok(Bytes::new(&[9; 300])),
            Outcome::ArgDecode("x".into()),
            Outcome::Panicked {
                message: "m".into(),
                location: None,
            },
        ];
        for o in cases {
            let mut ours = Vec::new();
            push_outcome(&mut ours, &o);
            assert_eq!(ours, postcard::to_stdvec(&o).unwrap());
            let (back, rest) = take_outcome(&ours).unwrap();
            assert_eq!(back, o);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn values_pushed_and_popped_are_items_as_pushed() {
        let mut direct = ItemsBuilder::new();
        let mut copied = ItemsBuilder::new();
        for v in [0u64, 1, 300, u64::MAX] {
            direct
                .push_value(&(v, "x".repeat(v as usize % 200)))
                .unwrap();
            copied.push(&postcard::to_allocvec(&(v, "x".repeat(v as usize % 200))).unwrap());
        }
        assert_eq!(direct.body(), copied.body());
        assert_eq!(direct.count(), 4);
        let last = direct.pop_last().unwrap();
        assert_eq!(
            last,
            postcard::to_allocvec(&(u64::MAX, "x".repeat((u64::MAX % 200) as usize))).unwrap()
        );
        let before_last = direct.pop_last().unwrap();
        assert_eq!(
            before_last,
            postcard::to_allocvec(&(300u64, "x".repeat(100))).unwrap()
        );
        assert_eq!(direct.count(), 2);
        direct.drop_first(1);
        assert_eq!(
            direct.pop_last().unwrap(),
            postcard::to_allocvec(&(1u64, "x")).unwrap()
        );
        assert_eq!(direct.pop_last(), None);
        assert_eq!(direct.bytes(), 0);
    }

    #[test]
    fn drop_first_keeps_the_rest() {
        let items: Vec<Vec<u8>> = (0..300u32).map(|i| vec![i as u8; i as usize]).collect();
        for n in [0u32, 1, 2, 150, 299, 300, 400] {
            let mut b = ItemsBuilder::new();
            for it in &items {
                b.push(it);
            }
            b.drop_first(n);
            let mut expected = ItemsBuilder::new();
            for it in items.iter().skip(n as usize) {
                expected.push(it);
            }
            assert_eq!(b.body(), expected.body(), "n = {n}");
            assert_eq!(b.count(), expected.count());
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut out = Vec::new();
        encode_init(&mut out, 0, b"ab", DEFAULT_MAX_FRAME).unwrap();
        let mut body = body_of(&out);
        body.push(0);
        assert!(matches!(
            decode_to_worker(&body),
            Err(DecodeError::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for body in [
            &[][..],
            &[7][..],
            &[1, 0xff][..],
            &[2, 1, 200, 200, 200][..],
        ] {
            assert!(decode_to_worker(body).is_err(), "{body:?}");
            assert!(decode_from_worker(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn huge_claimed_counts_fail_fast() {
        // Done with u64::MAX-ish outcomes claimed in a 15-byte frame.
        let mut body = vec![2u8, 1];
        body.extend_from_slice(&[0xff; 9]);
        body.push(0x01);
        assert!(decode_from_worker(&body).is_err());
        // Run with a huge item count.
        let mut body = vec![1u8, 1, 0, 0];
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_to_worker(&body).is_err());
    }

    proptest! {
        #[test]
        fn run_encoder_matches_derived_layout(
            batch in any::<u64>(),
            task in any::<u32>(),
            eager in any::<bool>(),
            items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..40),
        ) {
            let mut b = ItemsBuilder::new();
            for it in &items { b.push(it); }
            let mut out = Vec::new();
            encode_run(&mut out, batch, task, eager, &b, DEFAULT_MAX_FRAME).unwrap();
            let body = body_of(&out);
            let expected = ToWorker::Run(Run { batch, task, eager, items: items.iter().map(|i| Bytes::new(i)).collect() });
            prop_assert_eq!(&body, &postcard::to_stdvec(&expected).unwrap());
            prop_assert_eq!(decode_to_worker(&body).unwrap(), expected);
        }

        #[test]
        fn init_encoder_matches_derived_layout(task in any::<u32>(), arg in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            encode_init(&mut out, task, &arg, DEFAULT_MAX_FRAME).unwrap();
            let body = body_of(&out);
            let expected = ToWorker::Init { task, arg: Bytes::new(&arg) };
            prop_assert_eq!(decode_to_worker(&body).unwrap(), expected);
        }

        #[test]
        fn done_encoder_matches_derived_layout(
            batch in any::<u64>(),
            oks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..30),
            msg in ".{0,40}",
        ) {
            let mut outcomes: Vec<Outcome<'_>> = oks.iter().map(|o| Outcome::Ok(Bytes::new(o))).collect();
            outcomes.push(Outcome::Panicked { message: msg.clone(), location: Some(Location { file: "f.rs".into(), line: 3, column: 9 }) });
            outcomes.push(Outcome::ArgDecode(msg.clone()));
            outcomes.push(Outcome::OutputEncode(msg));
            let mut encoded = Vec::new();
            for o in &outcomes { push_outcome(&mut encoded, o); }
            let mut out = Vec::new();
            encode_done(&mut out, batch, outcomes.len() as u32, &encoded, DEFAULT_MAX_FRAME).unwrap();
            let body = body_of(&out);
            let expected = FromWorker::Done(Done { batch, outcomes });
            prop_assert_eq!(&body, &postcard::to_stdvec(&expected).unwrap());
            prop_assert_eq!(decode_from_worker(&body).unwrap(), expected);
        }

        #[test]
        fn decode_done_agrees_with_the_derived_decoder(body in proptest::collection::vec(any::<u8>(), 0..64), done in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..10)) {
            // Arbitrary bytes: both accept or both refuse a Done.
            let derived = decode_from_worker(&body);
            match decode_done(&body) {
                Ok(Some(view)) => {
                    let Ok(FromWorker::Done(d)) = derived else { panic!("disagree on {body:?}") };
                    prop_assert_eq!(view.batch, d.batch);
                    prop_assert_eq!(view.outcomes().collect::<Vec<_>>(), d.outcomes);
                }
                Ok(None) => prop_assert!(!matches!(derived, Ok(FromWorker::Done(_)))),
                Err(_) => prop_assert!(!matches!(derived, Ok(FromWorker::Done(_)))),
            }
            // A real Done frame.
            let outcomes: Vec<Outcome<'_>> = done.iter().map(|o| Outcome::Ok(Bytes::new(o))).collect();
            let mut enc = Vec::new();
            for o in &outcomes { push_outcome(&mut enc, o); }
            let mut out = Vec::new();
            encode_done(&mut out, 7, outcomes.len() as u32, &enc, DEFAULT_MAX_FRAME).unwrap();
            let framed = body_of(&out);
            let view = decode_done(&framed).unwrap().unwrap();
            prop_assert_eq!(view.count as usize, outcomes.len());
            let header = done_header(&framed).unwrap();
            prop_assert_eq!((header.batch, header.count), (view.batch, view.count));
            prop_assert_eq!(header.outcomes().collect::<Vec<_>>(), view.outcomes().collect::<Vec<_>>());
            prop_assert_eq!(view.outcomes().collect::<Vec<_>>(), outcomes.clone());
            // The same, one at a time, from every starting point.
            for skip in 0..=outcomes.len() {
                let mut each = Vec::new();
                view.each_from(skip as u32, |o| each.push(match o {
                    Ok(bytes) => Outcome::Ok(Bytes::new(bytes)),
                    Err(other) => other,
                }));
                prop_assert_eq!(&each[..], &outcomes[skip..]);
            }
        }

        #[test]
        fn decode_run_agrees_with_the_derived_decoder(body in proptest::collection::vec(any::<u8>(), 0..64), items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10), eager in any::<bool>()) {
            // Arbitrary bytes: both accept or both refuse a Run.
            let derived = decode_to_worker(&body);
            match decode_run(&body) {
                Ok(Some(view)) => {
                    let Ok(ToWorker::Run(r)) = derived else { panic!("disagree on {body:?}") };
                    prop_assert_eq!((view.batch, view.task, view.eager), (r.batch, r.task, r.eager));
                    prop_assert_eq!(view.items().collect::<Vec<_>>(), r.items.iter().map(|b| &b[..]).collect::<Vec<_>>());
                }
                Ok(None) | Err(_) => prop_assert!(!matches!(derived, Ok(ToWorker::Run(_)))),
            }
            // A real Run frame.
            let mut builder = ItemsBuilder::new();
            for item in &items { builder.push(item); }
            let mut out = Vec::new();
            encode_run(&mut out, 9, 3, eager, &builder, DEFAULT_MAX_FRAME).unwrap();
            let framed = body_of(&out);
            let view = decode_run(&framed).unwrap().unwrap();
            prop_assert_eq!((view.batch, view.task, view.eager, view.count as usize), (9, 3, eager, items.len()));
            prop_assert_eq!(view.items().map(<[u8]>::to_vec).collect::<Vec<_>>(), items);
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_to_worker(&body);
            let _ = decode_from_worker(&body);
            if let Ok(Some(v)) = decode_done(&body) {
                let _ = v.outcomes().count();
            }
        }
    }
}

//! The public error type: an opaque struct over a private kind, with
//! predicates, so new kinds can be added without breaking callers.

use std::fmt;
use std::sync::Arc;

use crate::task::unnamed_kind;

/// Everything that can go wrong with a task or with the pool.
///
/// Each submitted task ends in exactly one outcome: its result, or one
/// `Error`. Inspect it with the predicates (`is_panic`, `is_worker_died`,
/// ...) and accessors; its `Display` is a one-line, lowercase description
/// naming the task, the worker's pid and the cause where they are known.
///
/// A task's *own* error is not an `Error`: a task returning
/// `Result<T, E>` delivers that `Result` as its value, typed, so domain
/// failures and pool failures never mix.
#[derive(Clone)]
pub struct Error {
    kind: Box<ErrorKind>,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// Its status was lost: it was reaped by someone else (a host program
    /// that set `SIGCHLD` to `SIG_IGN` makes the kernel reap children), or
    /// it was an in-process thread that could not be joined.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Unknown => f.write_str("exit status unknown"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// Where a task panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicLocation {
    /// Source file.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ErrorKind {
    Panicked {
        task: String,
        pid: u32,
        message: String,
        location: Option<PanicLocation>,
    },
    WorkerDied {
        task: String,
        pid: u32,
        exit: Exit,
        /// The host it ran on, for a remote worker.
        host: Option<Arc<str>>,
    },
    /// The connection to a remote worker's host was lost: the task may or
    /// may not have run there; it is not run again.
    HostLost {
        task: String,
        host: Arc<str>,
        detail: String,
    },
    TimedOut {
        task: String,
        pid: u32,
        timeout: std::time::Duration,
        /// `false`: no worker even started it within its deadline, twice.
        started: bool,
        /// The host it ran on, for a remote worker.
        host: Option<Arc<str>>,
    },
    UnknownTask {
        name: String,
        available: Vec<String>,
    },
    Signature {
        name: String,
        expected: String,
        served: String,
    },
    /// The task takes worker state that the pool's workers do not hold.
    MissingState {
        task: String,
        /// The state type the task takes.
        needs: String,
        /// What the workers hold instead: the initializer and its state
        /// type.
        holds: Option<(String, String)>,
    },
    ArgEncode {
        task: String,
        message: String,
    },
    ArgTooLarge {
        task: String,
        len: usize,
        max: u32,
    },
    ArgDecode {
        task: String,
        message: String,
    },
    OutputEncode {
        task: String,
        message: String,
    },
    OutputDecode {
        task: String,
        message: String,
    },
    Protocol {
        pid: u32,
        detail: String,
        /// The host it ran on, for a remote worker.
        host: Option<Arc<str>>,
    },
    Startup {
        detail: String,
        source: Option<Arc<std::io::Error>>,
    },
    Initializer {
        message: String,
    },
    Broken {
        reason: String,
    },
    Closed,
    Terminated,
    Cancelled,
    WaitTimeout,
    InvalidCall {
        detail: String,
    },
    ResultTaken,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self {
            kind: Box::new(kind),
        }
    }

    pub(crate) fn startup(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Startup {
            detail: detail.into(),
            source: None,
        })
    }

    pub(crate) fn startup_io(detail: impl Into<String>, source: std::io::Error) -> Self {
        Self::new(ErrorKind::Startup {
            detail: detail.into(),
            source: Some(Arc::new(source)),
        })
    }

    /// The reason to record when this error breaks the pool: a `Broken`
    /// error's own reason (so that it is not wrapped in "the pool is
    /// broken: " a second time), any other error's message.
    pub(crate) fn broken_reason(&self) -> String {
        match &*self.kind {
            ErrorKind::Broken { reason } => reason.clone(),
            _ => self.to_string(),
        }
    }

    /// The task panicked in its worker (the worker survives).
    pub fn is_panic(&self) -> bool {
        matches!(*self.kind, ErrorKind::Panicked { .. })
    }

    /// The panic message, when the task panicked with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match &*self.kind {
            ErrorKind::Panicked { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Where the task panicked, when known.
    pub fn panic_location(&self) -> Option<&PanicLocation> {
        match &*self.kind {
            ErrorKind::Panicked { location, .. } => location.as_ref(),
            _ => None,
        }
    }

    /// The worker running the task died (crash, abort, exit, kill).
    pub fn is_worker_died(&self) -> bool {
        matches!(*self.kind, ErrorKind::WorkerDied { .. })
    }

    /// The task passed its deadline; its worker was killed (SIGTERM, then
    /// SIGKILL after the grace period) and replaced.
    pub fn is_timeout(&self) -> bool {
        matches!(*self.kind, ErrorKind::TimedOut { .. })
    }

    /// The connection to the host of the task's remote worker was lost
    /// (the host died, went silent past its keep-alives, or its network
    /// went): the task may or may not have run there, and is not run
    /// again.
    pub fn is_host_lost(&self) -> bool {
        matches!(*self.kind, ErrorKind::HostLost { .. })
    }

    /// The host of the remote worker involved, for
    /// [`is_worker_died`](Self::is_worker_died) and
    /// [`is_host_lost`](Self::is_host_lost) errors of remote workers.
    pub fn host(&self) -> Option<&str> {
        match &*self.kind {
            ErrorKind::WorkerDied { host, .. }
            | ErrorKind::TimedOut { host, .. }
            | ErrorKind::Protocol { host, .. } => host.as_deref(),
            ErrorKind::HostLost { host, .. } => Some(host),
            _ => None,
        }
    }

    /// How the worker ended, for [`is_worker_died`](Self::is_worker_died).
    pub fn exit(&self) -> Option<Exit> {
        match &*self.kind {
            ErrorKind::WorkerDied { exit, .. } => Some(*exit),
            _ => None,
        }
    }

    /// The pid of the worker involved, when one was.
    pub fn worker_pid(&self) -> Option<u32> {
        match &*self.kind {
            ErrorKind::WorkerDied { pid, .. }
            | ErrorKind::TimedOut { pid, .. }
            | ErrorKind::Panicked { pid, .. }
            | ErrorKind::Protocol { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// The name of the task this error belongs to, when it belongs to one.
    pub fn task_name(&self) -> Option<&str> {
        match &*self.kind {
            ErrorKind::Panicked { task, .. }
            | ErrorKind::WorkerDied { task, .. }
            | ErrorKind::HostLost { task, .. }
            | ErrorKind::TimedOut { task, .. }
            | ErrorKind::ArgEncode { task, .. }
            | ErrorKind::ArgTooLarge { task, .. }
            | ErrorKind::ArgDecode { task, .. }
            | ErrorKind::OutputEncode { task, .. }
            | ErrorKind::OutputDecode { task, .. }
            | ErrorKind::MissingState { task, .. } => Some(task),
            ErrorKind::UnknownTask { name, .. } | ErrorKind::Signature { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The workers do not serve the named task, or serve it with other
    /// argument or result types. Also true for
    /// [`is_unnamed_task`](Self::is_unnamed_task).
    pub fn is_unknown_task(&self) -> bool {
        matches!(
            *self.kind,
            ErrorKind::UnknownTask { .. } | ErrorKind::Signature { .. }
        )
    }

    /// The task takes worker state (`fn(&mut S, ..)` or `fn(&S, ..)`,
    /// registered with
    /// [`Registry::task_with_state`](crate::Registry::task_with_state)) of
    /// a type the pool's workers do not hold: the pool has no state-making
    /// initializer ([`Builder::worker_state`](crate::Builder::worker_state)),
    /// or one that makes another type. Refused at submit; nothing ran.
    pub fn is_missing_state(&self) -> bool {
        matches!(*self.kind, ErrorKind::MissingState { .. })
    }

    /// The task was given as a closure (or a function pointer), which has
    /// no name of its own: every closure in one function has the same type
    /// name, so it could stand for another. No worker serves such a name
    /// (registering one panics); name a `fn` and pass that, or call a
    /// closure registered under an explicit name through
    /// [`Task::named`](crate::Task::named).
    ///
    /// ```no_run
    /// # let pool = procpool::Pool::builder().build().unwrap();
    /// let err = pool.map(|x: u64| x * 100, 0..3).unwrap_err();
    /// assert!(err.is_unnamed_task() && err.is_unknown_task());
    /// ```
    pub fn is_unnamed_task(&self) -> bool {
        matches!(&*self.kind, ErrorKind::UnknownTask { name, .. } if unnamed_kind(name).is_some())
    }

    /// An argument or result could not be encoded or decoded (or was too
    /// large for a frame). Only that task failed.
    pub fn is_serialization(&self) -> bool {
        matches!(
            *self.kind,
            ErrorKind::ArgEncode { .. }
                | ErrorKind::ArgTooLarge { .. }
                | ErrorKind::ArgDecode { .. }
                | ErrorKind::OutputEncode { .. }
                | ErrorKind::OutputDecode { .. }
        )
    }

    /// A worker broke the protocol; it was killed and replaced.
    pub fn is_protocol(&self) -> bool {
        matches!(*self.kind, ErrorKind::Protocol { .. })
    }

    /// The pool could not start its workers (missing program, not a
    /// worker, wrong protocol version, start-up timeout, failed
    /// initializer).
    pub fn is_startup(&self) -> bool {
        matches!(
            *self.kind,
            ErrorKind::Startup { .. } | ErrorKind::Initializer { .. }
        )
    }

    /// The pool can no longer start workers; queued work was failed.
    pub fn is_broken(&self) -> bool {
        matches!(*self.kind, ErrorKind::Broken { .. })
    }

    /// The pool was closed (or joined) and accepts no new work.
    pub fn is_closed(&self) -> bool {
        matches!(*self.kind, ErrorKind::Closed)
    }

    /// The pool was terminated (or dropped) before the task finished.
    pub fn is_terminated(&self) -> bool {
        matches!(*self.kind, ErrorKind::Terminated)
    }

    /// The caller gave the task up (dropped its iterator or handle).
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.kind, ErrorKind::Cancelled)
    }

    /// [`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout) ran
    /// out of time; the task is still running and the handle still valid.
    pub fn is_wait_timeout(&self) -> bool {
        matches!(*self.kind, ErrorKind::WaitTimeout)
    }

    /// The call was refused before anything was sent because it makes no
    /// sense (a zero deadline, or a state-making initializer called as a
    /// task).
    pub fn is_invalid_call(&self) -> bool {
        matches!(*self.kind, ErrorKind::InvalidCall { .. })
    }
}

/// " on <host>" for a remote worker's host, nothing for a local one.
struct On<'a>(&'a Option<Arc<str>>);

impl fmt::Display for On<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(host) => write!(f, " on {host}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ErrorKind::Panicked {
                task,
                pid,
                message,
                location,
            } => {
                write!(f, "task `{task}` panicked in worker {pid}: {message}")?;
                if let Some(l) = location {
                    write!(f, " at {l}")?;
                }
                Ok(())
            }
            ErrorKind::WorkerDied {
                task,
                pid,
                exit,
                host: None,
            } => {
                write!(f, "worker {pid} died ({exit}) while running task `{task}`")
            }
            ErrorKind::WorkerDied {
                task,
                pid,
                exit,
                host: Some(host),
            } => write!(
                f,
                "worker {pid} on {host} died ({exit}) while running task `{task}`"
            ),
            ErrorKind::HostLost { task, host, detail } => write!(
                f,
                "lost the connection to {host} while task `{task}` was there ({detail}); it may \
                 or may not have run, and is not run again"
            ),
            ErrorKind::TimedOut {
                task,
                pid,
                timeout,
                started: true,
                host,
            } => write!(
                f,
                "task `{task}` passed its {timeout:?} deadline in worker {pid}{}, which was killed",
                On(host)
            ),
            ErrorKind::TimedOut {
                task,
                pid,
                timeout,
                started: false,
                host,
            } => write!(
                f,
                "task `{task}` was not even started within its {timeout:?} deadline, by two \
                 workers in turn (the last, {pid}{}, was killed)",
                On(host)
            ),
            ErrorKind::UnknownTask { name, available } => match unnamed_kind(name) {
                Some(kind) => write!(
                    f,
                    "`{name}` is {kind}, which cannot be a task: it has no name of its own \
                     (others share `{name}`); name a `fn`, register it and pass that"
                ),
                None => write!(
                    f,
                    "the workers do not serve a task named `{name}` (they serve: {})",
                    available.join(", ")
                ),
            },
            ErrorKind::Signature {
                name,
                expected,
                served,
            } => write!(
                f,
                "task `{name}` is called as `{expected}` but the workers serve it as `{served}`"
            ),
            ErrorKind::MissingState { task, needs, holds } => {
                write!(f, "task `{task}` takes the worker state `{needs}`, but ")?;
                match holds {
                    Some((init, state)) => {
                        write!(f, "this pool's workers hold `{state}` (made by `{init}`)")?
                    }
                    None => f.write_str("this pool's workers hold no state")?,
                }
                write!(
                    f,
                    ": register an initializer returning `{needs}` with Registry::initializer \
                     (or Registry::try_initializer) and give it to Builder::worker_state"
                )
            }
            ErrorKind::ArgEncode { task, message } => {
                write!(f, "cannot encode the argument of task `{task}`: {message}")
            }
            ErrorKind::ArgTooLarge { task, len, max } => write!(
                f,
                "the argument of task `{task}` encodes to {len} bytes: with its framing, that is \
                 over the frame limit of {max} bytes (Builder::max_frame)"
            ),
            ErrorKind::ArgDecode { task, message } => write!(
                f,
                "the worker cannot decode the argument of task `{task}`: {message}"
            ),
            ErrorKind::OutputEncode { task, message } => {
                write!(
                    f,
                    "the worker cannot encode the result of task `{task}`: {message}"
                )
            }
            ErrorKind::OutputDecode { task, message } => {
                write!(f, "cannot decode the result of task `{task}`: {message}")
            }
            ErrorKind::Protocol { pid, detail, host } => {
                write!(f, "worker {pid}{} broke the protocol: {detail}", On(host))
            }
            ErrorKind::Startup { detail, source } => {
                write!(f, "cannot start workers: {detail}")?;
                if let Some(s) = source {
                    write!(f, ": {s}")?;
                }
                Ok(())
            }
            ErrorKind::Initializer { message } => {
                write!(f, "the worker initializer failed: {message}")
            }
            ErrorKind::Broken { reason } => write!(f, "the pool is broken: {reason}"),
            ErrorKind::Closed => f.write_str("the pool is closed"),
            ErrorKind::Terminated => f.write_str("the pool was terminated"),
            ErrorKind::Cancelled => f.write_str("the task was cancelled"),
            ErrorKind::WaitTimeout => f.write_str("timed out waiting for the result"),
            ErrorKind::InvalidCall { detail } => write!(f, "invalid call: {detail}"),
            ErrorKind::ResultTaken => f.write_str("the result was already taken"),
        }
    }
}

/// `{:?}` is the message, as `Display` writes it: an `Error` returned from
/// `main`, or shown by `unwrap`, reads as one line. `{:#?}` shows the
/// kind and its fields.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_struct("Error").field("kind", &self.kind).finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ErrorKind::Startup {
                source: Some(s), ..
            } => Some(&**s),
            _ => None,
        }
    }
}

/// The message of a panic payload (a `&str` or `String`; anything else is
/// described as such).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::Shared;

    /// What the dispatcher's `halt(cause)` leaves for every caller: the
    /// pool's state records a reason for `cause`, and work fails with the
    /// pool's loss error.
    fn halted_by(cause: Error) -> String {
        let shared = Shared::new();
        shared.set_broken(cause.broken_reason());
        shared.loss_error().to_string()
    }

    #[test]
    fn a_broken_pool_says_so_once() {
        let cause = Error::new(ErrorKind::Broken {
            reason: "workers failed to start 4 times within 60s (the limit is 3); last: \
                     cannot start workers: exit code 7"
                .into(),
        });
        assert_eq!(
            halted_by(cause),
            "the pool is broken: workers failed to start 4 times within 60s (the limit is 3); \
             last: cannot start workers: exit code 7"
        );
        let cause = Error::startup("the worker program does not exist");
        assert_eq!(
            halted_by(cause),
            "the pool is broken: cannot start workers: the worker program does not exist"
        );
    }

    #[test]
    fn debug_is_the_message_and_alternate_debug_the_kind() {
        let err = Error::startup_io(
            "cannot start `/no/such/worker`",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let message = "cannot start workers: cannot start `/no/such/worker`: entity not found";
        assert_eq!(err.to_string(), message);
        assert_eq!(format!("{err:?}"), message);
        assert_eq!(
            format!("{:?}", Err::<(), _>(err.clone())),
            format!("Err({message})")
        );
        let pretty = format!("{err:#?}");
        assert!(
            pretty.starts_with("Error {\n    kind: Startup {"),
            "{pretty}"
        );
        assert!(pretty.contains("NotFound"), "{pretty}");
    }

    #[test]
    fn closures_are_named_as_such_at_submit() {
        let err = Error::new(ErrorKind::UnknownTask {
            name: "app::main::{{closure}}".into(),
            available: vec!["app::square".into()],
        });
        assert!(err.is_unnamed_task() && err.is_unknown_task());
        assert_eq!(
            err.to_string(),
            "`app::main::{{closure}}` is a closure, which cannot be a task: it has no name of \
             its own (others share `app::main::{{closure}}`); name a `fn`, register it and pass \
             that"
        );
        let err = Error::new(ErrorKind::UnknownTask {
            name: "app::cube".into(),
            available: vec!["app::square".into()],
        });
        assert!(!err.is_unnamed_task() && err.is_unknown_task());
    }
}

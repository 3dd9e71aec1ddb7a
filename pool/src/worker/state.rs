//! Per-worker state and the worker index.
//!
//! A state-making initializer ([`Registry::initializer`]) runs once in a
//! worker; what it returns is kept there, type-erased, as the worker's
//! [`WorkerState`], and every task registered with
//! [`Registry::task_with_state`] gets it as its first parameter. The state
//! never crosses the pipe: the parent learns only its type name (in the
//! task list of the handshake, as [`StateUse`]), which is how it refuses at
//! submit a task needing state that the pool's workers do not hold.
//!
//! The state is dropped when the serve loop ends (the parent closed the
//! worker's input: join, recycling), before the process exits; a worker
//! that is killed or crashes never gets there.
//!
//! The worker index ([`index`]) is a number in `0..workers` given to the
//! worker at spawn; a replacement takes the index of the worker it
//! replaces.

use std::any::{Any, type_name};
use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use procpool_protocol::StateUse;

use super::Registry;
use super::registry::{ItemError, Runner, decode_args, encode_output, own_name_of};
use crate::task::{StateTaskFn, TaskFn};
use crate::values::{TaskArg, TaskOutput};

/// What a worker's state-making initializer returned, kept in the worker
/// for the tasks that take it, and dropped when the worker's serve loop
/// ends.
pub(crate) struct WorkerState {
    value: Box<dyn Any>,
    type_name: &'static str,
}

impl fmt::Debug for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerState")
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

/// Drops a worker's state, catching a panic in its `Drop` (reported on
/// stderr, which the parent shares): the worker still exits as it meant to.
pub(crate) fn drop_state(state: Option<WorkerState>) {
    let Some(state) = state else { return };
    let type_name = state.type_name;
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(state))) {
        let message = crate::error::panic_message(&*payload);
        // A payload whose own Drop panics must not escape either.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        eprintln!(
            "procpool worker {}: dropping its state `{type_name}` panicked: {message}",
            std::process::id()
        );
    }
}

/// The index of this worker process, given at spawn.
static PROCESS_INDEX: OnceLock<usize> = OnceLock::new();

thread_local! {
    /// The index of the in-process worker running on this thread.
    static THREAD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker this code runs in: a number in `0..workers`
/// (Python's `multiprocessing` has none; mpire calls it `worker_id`), or
/// `None` outside a worker.
///
/// Each of a pool's workers has a different index, and a worker started to
/// replace another (after a crash, a deadline, or recycling by
/// [`max_tasks_per_worker`](crate::Builder::max_tasks_per_worker)) takes
/// the index of the one it replaces, so the indices in use are always
/// `0..workers`. Use it to pick a GPU, a port, a shard or a file per
/// worker.
///
/// The replacement starts at once, not when the worker it replaces is
/// gone: for a while both may be alive under one index. A worker being
/// killed (a deadline, a cancel) may still finish its current task within
/// the kill's grace; one retired (recycled, or halted by a cancel whose
/// task ended first) finishes the batch it is in and drops its state. A
/// resource bound to the index must bear that overlap (a port opened with
/// `SO_REUSEPORT`, a GPU with room for two), or be claimed with a lock the
/// old worker's exit releases.
///
/// In a worker process it is known to every thread, from before the
/// initializer runs; with [`Builder::in_process`](crate::Builder::in_process)
/// it is known on the worker's own thread only.
///
/// ```
/// fn where_am_i() -> Option<usize> {
///     procpool::worker::index()
/// }
/// assert_eq!(where_am_i(), None); // not in a worker
/// ```
pub fn index() -> Option<usize> {
    THREAD_INDEX
        .with(Cell::get)
        .or_else(|| PROCESS_INDEX.get().copied())
}

/// Records this worker process's index (from its environment).
pub(crate) fn set_process_index(index: usize) {
    let _ = PROCESS_INDEX.set(index);
}

/// Records the index of the in-process worker running on this thread.
pub(crate) fn set_thread_index(index: Option<usize>) {
    THREAD_INDEX.with(|i| i.set(index));
}

impl Registry {
    /// Registers a task that takes its worker's state first: `f` is a
    /// `fn(&mut S, ..) -> R` or a `fn(&S, ..) -> R`, where `S` is the type
    /// the pool's state-making [`initializer`](Self::initializer) returns.
    /// The parent calls it like any task, without the state:
    /// `fn predict(model: &mut Model, x: f64) -> f64` is called as
    /// `pool.map(predict, xs)`.
    ///
    /// A pool whose workers hold no state of type `S` refuses the task at
    /// submit, with an error that
    /// [`is_missing_state`](crate::Error::is_missing_state).
    ///
    /// # Panics
    ///
    /// As [`task`](Self::task): if `f` is a closure or a function pointer,
    /// or if a task of that name is already registered.
    pub fn task_with_state<F, S, Args, R, M>(self, f: F) -> Self
    where
        F: StateTaskFn<S, Args, R, M>,
        S: 'static,
        Args: TaskArg,
        R: TaskOutput,
    {
        self.task_with_state_named(own_name_of::<F>("a task"), f)
    }

    /// [`task_with_state`](Self::task_with_state) under an explicit name,
    /// as [`task_named`](Self::task_named).
    ///
    /// # Panics
    ///
    /// As [`task_named`](Self::task_named).
    pub fn task_with_state_named<F, S, Args, R, M>(self, name: impl Into<String>, f: F) -> Self
    where
        F: StateTaskFn<S, Args, R, M>,
        S: 'static,
        Args: TaskArg,
        R: TaskOutput,
    {
        let name = name.into();
        let task = name.clone();
        let run: Runner = Box::new(move |state: &mut Option<WorkerState>, arg: &[u8], out| {
            let Some(state) = state.as_mut().and_then(|s| s.value.downcast_mut::<S>()) else {
                let holds = match state {
                    Some(s) => format!("state of type `{}`", s.type_name),
                    None => "no state".to_owned(),
                };
                return Err(ItemError::NoState(format!(
                    "task `{task}` takes the worker state `{}`, but this worker holds {holds}",
                    type_name::<S>()
                )));
            };
            let args = decode_args::<Args>(arg)?;
            encode_output(&f.call(state, args), out)
        });
        self.register::<Args, R>(name, StateUse::Takes(type_name::<S>().to_owned()), run)
    }

    /// Registers a state-making initializer: run once in each worker whose
    /// pool names it in [`Builder::worker_state`](crate::Builder::worker_state),
    /// before that worker's first task, it returns the worker's state,
    /// which the tasks registered with
    /// [`task_with_state`](Self::task_with_state) take as their first
    /// parameter.
    ///
    /// The state lives as long as its worker: every task that worker runs
    /// sees the same value (changes made through `&mut S` persist), a
    /// replacement worker (after a crash, a deadline or recycling) makes a
    /// fresh one, and it is dropped when the worker ends normally (its
    /// input closed by [`Pool::join`](crate::Pool::join) or by
    /// [`max_tasks_per_worker`](crate::Builder::max_tasks_per_worker)),
    /// before the worker exits. A worker that is killed
    /// ([`Pool::terminate`](crate::Pool::terminate), a deadline) or crashes
    /// does not drop it.
    ///
    /// An initializer is not a task: the parent cannot call it through
    /// `map` or `apply`. A panic in it fails the worker's start like any
    /// initializer failure; use [`try_initializer`](Self::try_initializer)
    /// for one that returns `Result<S, E>`.
    ///
    /// # Panics
    ///
    /// As [`task`](Self::task): if `f` is a closure or a function pointer,
    /// or if a task of that name is already registered.
    pub fn initializer<F, Args, S, M>(self, f: F) -> Self
    where
        F: TaskFn<Args, S, M>,
        Args: TaskArg,
        S: 'static,
    {
        self.state_maker::<Args, S, S>(own_name_of::<F>("an initializer"), move |args| {
            Ok(f.call(args))
        })
    }

    /// [`initializer`](Self::initializer) for an initializer that can
    /// fail: `Ok(state)` becomes the worker's state, and `Err(e)` fails the
    /// worker's start with `e`'s message, like any initializer failure (the
    /// pool does not build, or, for a replacement, the restart limit
    /// counts it).
    ///
    /// # Panics
    ///
    /// As [`initializer`](Self::initializer).
    pub fn try_initializer<F, Args, S, E, M>(self, f: F) -> Self
    where
        F: TaskFn<Args, Result<S, E>, M>,
        Args: TaskArg,
        S: 'static,
        E: fmt::Display + 'static,
    {
        self.state_maker::<Args, Result<S, E>, S>(own_name_of::<F>("an initializer"), move |args| {
            f.call(args).map_err(|e| e.to_string())
        })
    }

    /// Registers an initializer whose `Ok` result becomes the worker's
    /// state. It answers the parent with `Result<(), String>`: the state
    /// itself never leaves the worker.
    fn state_maker<Args, R, S>(
        self,
        name: &str,
        make: impl Fn(Args) -> Result<S, String> + Send + Sync + 'static,
    ) -> Self
    where
        Args: TaskArg,
        R: 'static,
        S: 'static,
    {
        let run: Runner = Box::new(move |state: &mut Option<WorkerState>, arg: &[u8], out| {
            let args = decode_args::<Args>(arg)?;
            let verdict = make(args).map(|value| {
                *state = Some(WorkerState {
                    value: Box::new(value),
                    type_name: type_name::<S>(),
                });
            });
            encode_output(&verdict, out)
        });
        self.register::<Args, R>(
            name.to_owned(),
            StateUse::Makes(type_name::<S>().to_owned()),
            run,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    struct Counter {
        seen: u64,
    }

    fn start_at(from: u64) -> Counter {
        Counter { seen: from }
    }

    fn refuse(why: String) -> Result<Counter, String> {
        Err(why)
    }

    fn add(counter: &mut Counter, x: u64) -> u64 {
        counter.seen += x;
        counter.seen
    }

    fn peek(counter: &Counter) -> u64 {
        counter.seen
    }

    fn registry() -> Registry {
        Registry::new()
            .initializer(start_at)
            .try_initializer(refuse)
            .task_with_state(add)
            .task_with_state(peek)
    }

    /// Runs task `index` of `r` on `arg`, returning the encoded result.
    fn run<A: Serialize>(
        r: &Registry,
        index: usize,
        state: &mut Option<WorkerState>,
        arg: &A,
    ) -> Result<Vec<u8>, ItemError> {
        let mut out = Vec::new();
        let arg = postcard::to_stdvec(arg).unwrap();
        let len = r.run(index, state, &arg, &mut out).expect("a task")?;
        // The result comes behind its length: give the result alone.
        let (result, rest) = postcard::take_from_bytes::<&[u8]>(&out).unwrap();
        assert!(rest.is_empty() && result.len() == len);
        Ok(result.to_vec())
    }

    fn verdict(bytes: &[u8]) -> Result<(), String> {
        postcard::from_bytes(bytes).unwrap()
    }

    #[test]
    fn the_handshake_says_which_state_each_task_makes_or_takes() {
        let infos = registry().infos();
        let state = |i: usize| infos[i].state.clone();
        let counter = type_name::<Counter>().to_owned();
        assert_eq!(state(0), StateUse::Makes(counter.clone()));
        assert_eq!(state(1), StateUse::Makes(counter.clone()));
        assert_eq!(state(2), StateUse::Takes(counter.clone()));
        assert_eq!(state(3), StateUse::Takes(counter));
        // The parent names a state task by its arguments alone, and an
        // initializer by what the function returns.
        assert_eq!(
            (infos[2].arg_type.as_str(), infos[3].arg_type.as_str()),
            ("u64", "()")
        );
        assert_eq!(infos[0].output_type, type_name::<Counter>());
        assert_eq!(infos[1].output_type, type_name::<Result<Counter, String>>());
    }

    #[test]
    fn the_state_persists_across_tasks_through_mut_and_shared_references() {
        let r = registry();
        let mut state = None;
        assert_eq!(
            verdict(&run(&r, 0, &mut state, &10u64).ok().unwrap()),
            Ok(())
        );
        for (x, seen) in [(1u64, 11u64), (5, 16)] {
            let out = run(&r, 2, &mut state, &x).ok().unwrap();
            assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), seen);
        }
        let out = run(&r, 3, &mut state, &()).ok().unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 16);
    }

    #[test]
    fn a_failing_initializer_leaves_no_state_and_says_why() {
        let r = registry();
        let mut state = None;
        let out = run(&r, 1, &mut state, &"no counter today".to_owned())
            .ok()
            .unwrap();
        assert_eq!(verdict(&out), Err("no counter today".to_owned()));
        assert!(state.is_none());
        match run(&r, 2, &mut state, &1u64) {
            Err(ItemError::NoState(m)) => assert!(
                m.ends_with(&format!(
                    "takes the worker state `{}`, but this worker holds no state",
                    type_name::<Counter>()
                )),
                "{m}"
            ),
            _ => panic!("a task without its state must not run"),
        }
    }

    #[test]
    fn a_state_of_another_type_is_not_handed_out() {
        let r = Registry::new()
            .initializer(start_at)
            .task_with_state_named("len_plus", |s: &mut String, x: u64| s.len() as u64 + x);
        let mut state = Some(WorkerState {
            value: Box::new(3u8),
            type_name: "u8",
        });
        assert!(matches!(
            run(&r, 1, &mut state, &1u64),
            Err(ItemError::NoState(m)) if m.contains("holds state of type `u8`")
        ));
    }

    fn shared_start() -> std::rc::Rc<u64> {
        std::rc::Rc::new(7)
    }

    fn shared_peek(shared: &std::rc::Rc<u64>) -> u64 {
        **shared
    }

    #[test]
    fn the_state_need_not_be_send() {
        let r = Registry::new()
            .initializer(shared_start)
            .task_with_state(shared_peek);
        let mut state = None;
        assert_eq!(verdict(&run(&r, 0, &mut state, &()).ok().unwrap()), Ok(()));
        let out = run(&r, 1, &mut state, &()).ok().unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 7);
    }

    #[test]
    #[should_panic(expected = "cannot register `")]
    fn closures_are_refused_as_initializers() {
        let _ = Registry::new().initializer(|x: u64| x);
    }

    #[test]
    fn a_panic_dropping_the_state_is_contained() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("bomb");
            }
        }
        drop_state(Some(WorkerState {
            value: Box::new(Bomb),
            type_name: "Bomb",
        }));
    }
}

//! The table of tasks a worker serves, and the state its initializer made.

use std::any::type_name;
use std::collections::HashMap;
use std::fmt;

use procpool_protocol::value::{push_prefixed, take_value};
use procpool_protocol::{StateUse, TaskInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::state::WorkerState;
use crate::task::{TaskFn, signature, unnamed_kind};
use crate::values::{TaskArg, TaskOutput};

/// Why one item could not run (panics are caught separately).
pub(crate) enum ItemError {
    ArgDecode(String),
    OutputEncode(String),
    /// The task takes state this worker does not hold.
    NoState(String),
}

/// Runs one item: decodes its argument, calls the task, and appends the
/// result's encoding to the buffer behind its length (the bytes of an
/// `Outcome::Ok` after its variant); returns the encoding's length.
pub(super) type Runner = Box<
    dyn Fn(&mut Option<WorkerState>, &[u8], &mut Vec<u8>) -> Result<usize, ItemError> + Send + Sync,
>;

struct Entry {
    info: TaskInfo,
    run: Runner,
}

/// The tasks a worker serves.
///
/// Build one in a function both sides call, register every task, and hand
/// it to [`serve_if_worker`](crate::serve_if_worker) (re-exec mode) or
/// [`worker::run`](crate::worker::run) (a standalone worker binary):
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
/// fn add(a: u64, b: u64) -> u64 { a + b }
///
/// let tasks = procpool::Registry::new().task(square).task(add);
/// assert_eq!(tasks.len(), 2);
/// ```
///
/// Arguments must be deserializable and results serializable, or the
/// task does not compile:
///
/// ```compile_fail
/// struct NotSerde;
/// fn opaque(_: NotSerde) -> u64 { 0 }
/// let tasks = procpool::Registry::new().task(opaque);
/// ```
///
/// ```compile_fail
/// struct NotSerde;
/// fn opaque(_: u64) -> NotSerde { NotSerde }
/// let tasks = procpool::Registry::new().task(opaque);
/// ```
///
/// # Per-worker state
///
/// A state-making [`initializer`](Self::initializer) runs once in each
/// worker (chosen with [`Builder::worker_state`](crate::Builder::worker_state));
/// what it returns stays in that worker as its state, and the tasks
/// registered with [`task_with_state`](Self::task_with_state) take it as
/// their first parameter, `&mut S` or `&S`:
///
/// ```
/// struct Counter { seen: u64 }
///
/// fn start_counting(from: u64) -> Counter { Counter { seen: from } }
/// fn count(counter: &mut Counter, x: u64) -> u64 { counter.seen += x; counter.seen }
/// fn peek(counter: &Counter) -> u64 { counter.seen }
///
/// let tasks = procpool::Registry::new()
///     .initializer(start_counting)
///     .task_with_state(count)
///     .task_with_state(peek);
/// assert_eq!(tasks.len(), 3);
/// ```
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

/// Decodes one item's argument; a deeply nested one decodes on a grown
/// stack instead of overflowing the serve thread's.
#[inline]
pub(super) fn decode_args<Args: DeserializeOwned>(arg: &[u8]) -> Result<Args, ItemError> {
    let (args, rest) =
        crate::payload::decoding_argument(|| take_value::<Args>(arg)).map_err(|e| {
            ItemError::ArgDecode(crate::payload::take_failure().unwrap_or(e.to_string()))
        })?;
    if !rest.is_empty() {
        return Err(ItemError::ArgDecode(format!(
            "{} bytes left over after the argument",
            rest.len()
        )));
    }
    Ok(args)
}

/// Appends one item's result to `out`, behind its length, straight from
/// the value (no scratch buffer); returns the encoding's length. On an
/// error `out` is as it was.
#[inline]
pub(super) fn encode_output<R: Serialize>(
    result: &R,
    out: &mut Vec<u8>,
) -> Result<usize, ItemError> {
    crate::payload::encoding_result(|| push_prefixed(out, result))
        .map_err(|e| ItemError::OutputEncode(e.to_string()))
}

/// Panics unless `f`'s type name can name a task; returns it.
pub(super) fn own_name_of<F>(what: &str) -> &'static str {
    let name = type_name::<F>();
    if let Some(kind) = unnamed_kind(name) {
        panic!(
            "procpool: cannot register `{name}` as {what}: it is {kind}, which has no name of \
             its own (others share `{name}`), so the parent could not tell them apart; \
             name a `fn` and register that (or use Registry::task_named with an explicit name)"
        );
    }
    name
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` under its Rust path (`std::any::type_name` of the
    /// function item), which is how the parent names it when it calls
    /// `pool.map(f, ..)` with the same function.
    ///
    /// # Panics
    ///
    /// If `f` is a closure or a function pointer: neither has a name of its
    /// own (all closures in one function share one type name), so the
    /// parent could not tell it from another. This is a programming error,
    /// like an invalid argument, and cannot be caught at compile time (on
    /// stable Rust no bound tells an `fn` item from a non-capturing closure,
    /// and `type_name` cannot be checked in a `const`). Register a named
    /// `fn` instead, or the closure under an explicit name with
    /// [`task_named`](Self::task_named):
    ///
    /// ```should_panic
    /// let tasks = procpool::Registry::new().task(|x: u64| x * 100); // panics
    /// ```
    ///
    /// Also if a task of that name is already registered.
    pub fn task<F, Args, R, M>(self, f: F) -> Self
    where
        F: TaskFn<Args, R, M>,
        Args: TaskArg,
        R: TaskOutput,
    {
        self.task_named(own_name_of::<F>("a task"), f)
    }

    /// Registers `f` under an explicit name, for parents that refer to it
    /// with [`Task::named`](crate::Task::named). `f` may be a closure: the
    /// name is what identifies it.
    ///
    /// # Panics
    ///
    /// If a task of that name is already registered, or if `name` is the
    /// type name of a closure or function pointer (`..::{{closure}}`,
    /// `fn(u64) -> u64`): a parent passing any such closure would then run
    /// this task.
    pub fn task_named<F, Args, R, M>(self, name: impl Into<String>, f: F) -> Self
    where
        F: TaskFn<Args, R, M>,
        Args: TaskArg,
        R: TaskOutput,
    {
        let run: Runner = Box::new(move |_state: &mut Option<WorkerState>, arg: &[u8], out| {
            let args = decode_args::<Args>(arg)?;
            encode_output(&f.call(args), out)
        });
        self.register::<Args, R>(name.into(), StateUse::None, run)
    }

    pub(super) fn register<Args, R>(mut self, name: String, state: StateUse, run: Runner) -> Self {
        if let Some(kind) = unnamed_kind(&name) {
            panic!(
                "procpool: `{name}` cannot be a task name: it is the type name of {kind}, \
                 which other closures or function pointers share; choose another name"
            );
        }
        let (arg_type, output_type) = signature::<Args, R>();
        let index = self.entries.len();
        if self.by_name.insert(name.clone(), index).is_some() {
            panic!("procpool: a task named `{name}` is already registered");
        }
        self.entries.push(Entry {
            info: TaskInfo {
                name,
                arg_type,
                output_type,
                state,
            },
            run,
        });
        self
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no task is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registered task names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.info.name.as_str())
    }

    pub(crate) fn infos(&self) -> Vec<TaskInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    /// What task `index` does with the worker's state; `None` if there is
    /// no such task.
    pub(crate) fn state_use(&self, index: usize) -> Option<&StateUse> {
        self.entries.get(index).map(|e| &e.info.state)
    }

    /// Runs task `index` on one encoded argument (and the worker's state),
    /// leaving the encoded result in `out`. `None` if there is no such
    /// task.
    pub(crate) fn run(
        &self,
        index: usize,
        state: &mut Option<WorkerState>,
        arg: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Result<usize, ItemError>> {
        self.entries.get(index).map(|e| (e.run)(state, arg, out))
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.info))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64) -> u64 {
        x * 2
    }

    #[test]
    fn tasks_are_named_by_their_path_and_run_on_encoded_bytes() {
        let r = Registry::new().task(double).task_named("twice", double);
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            ["procpool::worker::registry::tests::double", "twice"]
        );
        let infos = r.infos();
        assert_eq!(
            (infos[0].arg_type.as_str(), infos[0].output_type.as_str()),
            ("u64", "u64")
        );
        let mut out = Vec::new();
        let arg = postcard::to_stdvec(&21u64).unwrap();
        // The result is appended behind its length.
        out.push(0xAA);
        assert!(matches!(r.run(1, &mut None, &arg, &mut out), Some(Ok(1))));
        assert_eq!(out[..2], [0xAA, 1]);
        assert_eq!(postcard::from_bytes::<u64>(&out[2..]).unwrap(), 42);
        assert!(r.run(2, &mut None, &arg, &mut out).is_none());
    }

    #[test]
    fn a_bad_argument_is_an_arg_decode_error() {
        let r = Registry::new().task(double);
        let mut out = Vec::new();
        assert!(matches!(
            r.run(0, &mut None, &[], &mut out),
            Some(Err(ItemError::ArgDecode(_)))
        ));
        // Trailing bytes mean the caller's type was not the task's.
        let mut arg = postcard::to_stdvec(&1u64).unwrap();
        arg.push(0);
        assert!(matches!(
            r.run(0, &mut None, &arg, &mut out),
            Some(Err(ItemError::ArgDecode(_)))
        ));
    }

    #[test]
    #[should_panic(expected = "it is a closure, which has no name of its own")]
    fn closures_are_refused_under_their_type_name() {
        let _ = Registry::new().task(|x: u64| x + 1);
    }

    #[test]
    #[should_panic(expected = "it is a function pointer")]
    fn function_pointers_are_refused_under_their_type_name() {
        let f: fn(u64) -> u64 = double;
        let _ = Registry::new().task(f);
    }

    #[test]
    #[should_panic(expected = "cannot be a task name: it is the type name of a closure")]
    fn a_closure_type_name_is_refused_as_an_explicit_name() {
        let _ = Registry::new().task_named("app::main::{{closure}}", double);
    }

    #[test]
    fn a_closure_under_an_explicit_name_is_a_task() {
        let r = Registry::new().task_named("hundredfold", |x: u64| x * 100);
        let mut out = Vec::new();
        let arg = postcard::to_stdvec(&3u64).unwrap();
        assert!(matches!(r.run(0, &mut None, &arg, &mut out), Some(Ok(2))));
        assert_eq!(postcard::from_bytes::<u64>(&out[1..]).unwrap(), 300);
    }

    #[test]
    #[should_panic(expected = "a task named `twice` is already registered")]
    fn duplicate_names_are_refused() {
        let _ = Registry::new()
            .task_named("twice", double)
            .task_named("twice", double);
    }
}

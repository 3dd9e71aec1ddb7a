//! How a plain function becomes a task, on both sides of the pipe.
//!
//! A task is any `fn` item of zero to four arguments whose arguments
//! implement `DeserializeOwned` and whose result implements `Serialize`. Its
//! name is its Rust path (`std::any::type_name` of the function item), so
//! the parent and a worker built from the same source agree on it without
//! any macro; [`Task::named`] and
//! [`Registry::task_named`](crate::Registry::task_named) give explicit names
//! for workers built separately.
//!
//! Closures and function pointers have no name of their own: every closure
//! in one function has the type name `path::to::function::{{closure}}`, and
//! every `fn(u64) -> u64` pointer is `fn(u64) -> u64`. Taken as a task, one
//! would silently stand for another, so they are refused: registering one
//! under its type name panics, and submitting one is an error
//! ([`Error::is_unnamed_task`](crate::Error::is_unnamed_task)). A closure
//! registered under an explicit name is fine, called through
//! [`Task::named`].
//!
//! This cannot be a compile-time error: on stable Rust no trait tells an
//! `fn` item from a non-capturing closure (both are `Fn + Copy + 'static`
//! and neither can be excluded by a bound), and `type_name` is not usable
//! in a `const` assertion. So the check is on the type name, at run time.
//!
//! Several arguments travel as one tuple: `fn add(a: u64, b: u64)` is
//! called with `(u64, u64)`, which is what `starmap` feeds it.
//!
//! A task may also take its worker's state first (`&mut S` or `&S`, see
//! [`StateTaskFn`]): the state stays in the worker, so the parent names
//! such a task with the same `Args` as if it had no state.
//!
//! The last type parameter of [`TaskFn`], [`StateTaskFn`] and [`TaskRef`]
//! is a marker that only keeps the impls of each arity and kind apart; it
//! is always inferred.
//!
//! When something cannot be a task, the compiler says what to write
//! instead: these traits, and those bounding what crosses the pipe
//! ([`TaskArg`](crate::TaskArg), [`TaskOutput`](crate::TaskOutput),
//! [`CallArg`](crate::CallArg), [`CallOutput`](crate::CallOutput)), carry
//! `#[diagnostic::on_unimplemented]` messages (a function of five
//! arguments, a closure that captures, a type without serde, a task taking
//! state registered as a plain one), and their impls are
//! `#[diagnostic::do_not_recommend]`, so the error names the bound that
//! failed rather than serde's impl list. A borrowed parameter (`&str`) is
//! a lifetime error, which no such message can reach: it names
//! [`OwnedData`](crate::OwnedData). `tests/tests/diagnostics.rs` pins the
//! key words of each message.

use std::any::type_name;
use std::borrow::Cow;
use std::convert::Infallible;
use std::marker::PhantomData;

/// A function the worker runtime can call with `Args` to get `R`.
///
/// Implemented for every `Fn` of arity 0 to 4 that is
/// `Copy + Send + Sync + 'static`; `Args` is the argument for arity 1, a
/// tuple otherwise. That takes in all `fn` items, and also non-capturing
/// closures and function pointers, which no bound can exclude but which
/// have no name of their own (all closures in one function share one type
/// name): [`Registry::task`](crate::Registry::task) refuses them, and
/// submitting one is an error that
/// [`is_unnamed_task`](crate::Error::is_unnamed_task).
///
/// A function of five arguments is not a task (pass them as one tuple or
/// struct), nor is a closure that captures something:
///
/// ```compile_fail
/// fn five(a: u8, b: u8, c: u8, d: u8, e: u8) -> u8 { a + b + c + d + e }
/// let tasks = procpool::Registry::new().task(five);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task",
    label = "not a function a worker can call as a task",
    note = "a task is a named `fn` (or a closure that captures nothing) of 0 to 4 arguments; pass more as one tuple or struct",
    note = "a task that takes its worker's state first (`&mut S` or `&S`) is registered with `Registry::task_with_state`"
)]
pub trait TaskFn<Args, R, Marker>: Copy + Send + Sync + 'static {
    /// Calls the function.
    fn call(&self, args: Args) -> R;
}

/// A function that takes its worker's state first: `fn(&mut S, ..) -> R`
/// or `fn(&S, ..) -> R`, then 0 to 4 arguments that travel as `Args` (the
/// argument itself for one, a tuple otherwise), as for [`TaskFn`].
///
/// The state is what the pool's state-making initializer returned in that
/// worker (see [`Registry::initializer`](crate::Registry::initializer)).
/// The parent calls such a task like any other, with `Args` only:
/// `fn predict(model: &mut Model, x: f64) -> f64` is called as
/// `pool.map(predict, xs)` with `xs` of `f64`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task taking worker state",
    label = "not a function of the worker's state and 0 to 4 arguments",
    note = "such a task is a named `fn` taking `&mut S` or `&S` first, `S` being what the state initializer returns, then 0 to 4 arguments (more as one tuple or struct)",
    note = "a task without state is registered with `Registry::task`"
)]
pub trait StateTaskFn<S, Args, R, Marker>: Copy + Send + Sync + 'static {
    /// Calls the function on the worker's state.
    fn call(&self, state: &mut S, args: Args) -> R;
}

/// A reference to a task from the parent: gives its name.
///
/// Implemented for every [`TaskFn`] and [`StateTaskFn`] (named by its
/// Rust path; the state of a [`StateTaskFn`] is not part of `Args`, since
/// it never leaves the worker) and for [`Task`] handles (named
/// explicitly).
///
/// A task of several arguments is called with one tuple of them (the
/// compiler says "expected `(u64, u64)`"):
///
/// ```compile_fail
/// # fn demo(pool: &procpool::Pool) {
/// fn add(a: u64, b: u64) -> u64 { a + b }
/// let sum = pool.apply(add, 2); // write `pool.apply(add, (2, 3))`
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be called as a task taking `{Args}`",
    label = "not a task taking `{Args}`",
    note = "a task is a named `fn` (or a closure that captures nothing) of 0 to 4 arguments, or a `Task::named` handle",
    note = "a task of several arguments takes them as one tuple: `pool.apply(add, (2, 3))`, or `pool.starmap(add, pairs)`",
    note = "a task that takes its worker's state first is called without it: `fn predict(m: &mut Model, x: f64)` takes an `f64`"
)]
pub trait TaskRef<Args, R, Marker> {
    /// The name under which workers serve the task.
    fn task_name(&self) -> Cow<'static, str>;
}

/// Marker for [`StateTaskFn`] and [`TaskRef`]: a function taking `&mut S`
/// first, the rest of its signature being `F`. Never built.
pub struct StateMut<S, F>(PhantomData<fn(S) -> F>, Infallible);

/// Marker for [`StateTaskFn`] and [`TaskRef`]: a function taking `&S`
/// first, the rest of its signature being `F`. Never built.
pub struct StateRef<S, F>(PhantomData<fn(S) -> F>, Infallible);

impl<S, F> std::fmt::Debug for StateMut<S, F> {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {}
    }
}

impl<S, F> std::fmt::Debug for StateRef<S, F> {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {}
    }
}

/// The impls of one arity: `$args` is how the arguments travel, `$pat`
/// takes them apart again. Each kind of function has a marker of its own,
/// so the impls never overlap, and `TaskRef` is implemented per kind rather
/// than over `TaskFn` (a blanket impl over each trait would overlap).
macro_rules! arity {
    ($args:ty, $pat:pat_param, ($($arg:ident),*)) => {
        #[allow(non_snake_case)]
        #[diagnostic::do_not_recommend]
        impl<Func, $($arg,)* Ret> TaskFn<$args, Ret, fn($($arg),*) -> Ret> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            fn call(&self, $pat: $args) -> Ret {
                self($($arg),*)
            }
        }

        #[diagnostic::do_not_recommend]
        impl<Func, $($arg,)* Ret> TaskRef<$args, Ret, fn($($arg),*) -> Ret> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            fn task_name(&self) -> Cow<'static, str> {
                Cow::Borrowed(type_name::<Func>())
            }
        }

        #[allow(non_snake_case)]
        #[diagnostic::do_not_recommend]
        impl<Func, State, $($arg,)* Ret>
            StateTaskFn<State, $args, Ret, StateMut<State, fn($($arg),*) -> Ret>> for Func
        where
            Func: Fn(&mut State, $($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            fn call(&self, state: &mut State, $pat: $args) -> Ret {
                self(state, $($arg),*)
            }
        }

        #[diagnostic::do_not_recommend]
        impl<Func, State, $($arg,)* Ret> TaskRef<$args, Ret, StateMut<State, fn($($arg),*) -> Ret>>
            for Func
        where
            Func: Fn(&mut State, $($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            fn task_name(&self) -> Cow<'static, str> {
                Cow::Borrowed(type_name::<Func>())
            }
        }

        #[allow(non_snake_case)]
        #[diagnostic::do_not_recommend]
        impl<Func, State, $($arg,)* Ret>
            StateTaskFn<State, $args, Ret, StateRef<State, fn($($arg),*) -> Ret>> for Func
        where
            Func: Fn(&State, $($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            fn call(&self, state: &mut State, $pat: $args) -> Ret {
                self(&*state, $($arg),*)
            }
        }

        #[diagnostic::do_not_recommend]
        impl<Func, State, $($arg,)* Ret> TaskRef<$args, Ret, StateRef<State, fn($($arg),*) -> Ret>>
            for Func
        where
            Func: Fn(&State, $($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            fn task_name(&self) -> Cow<'static, str> {
                Cow::Borrowed(type_name::<Func>())
            }
        }
    };
}

arity!((), (), ());
arity!(A, A, (A));
arity!((A, B), (A, B), (A, B));
arity!((A, B, C), (A, B, C), (A, B, C));
arity!((A, B, C, D), (A, B, C, D), (A, B, C, D));

/// An explicitly named, typed reference to a task served by a worker
/// program this binary does not link (see
/// [`Registry::task_named`](crate::Registry::task_named)).
///
/// ```
/// let square: procpool::Task<u64, u64> = procpool::Task::named("square");
/// assert_eq!(square.name(), "square");
/// ```
pub struct Task<Args, R> {
    name: Cow<'static, str>,
    _types: PhantomData<fn(Args) -> R>,
}

impl<Args, R> Task<Args, R> {
    /// A handle to the task the workers serve under `name`.
    pub fn named(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            _types: PhantomData,
        }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<Args, R> Clone for Task<Args, R> {
    fn clone(&self) -> Self {
        Self::named(self.name.clone())
    }
}

impl<Args, R> std::fmt::Debug for Task<Args, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("args", &type_name::<Args>())
            .field("result", &type_name::<R>())
            .finish()
    }
}

/// Marker for [`Task`] handles in [`TaskRef`].
#[derive(Debug)]
pub enum Named {}

impl<Args, R> TaskRef<Args, R, Named> for Task<Args, R> {
    fn task_name(&self) -> Cow<'static, str> {
        self.name.clone()
    }
}

/// What kind of anonymous type `name` (a `type_name`) is, if it is one
/// that cannot name a task: all closures in one function share one type
/// name, and all function pointers of one signature another.
pub(crate) fn unnamed_kind(name: &str) -> Option<&'static str> {
    // A reference to a closure or a function pointer is no better.
    let bare = name.trim_start_matches('&');
    if bare.ends_with("{{closure}}") {
        Some("a closure")
    } else if ["fn(", "unsafe ", "extern ", "for<"]
        .iter()
        .any(|p| bare.starts_with(p))
    {
        Some("a function pointer")
    } else {
        None
    }
}

/// The signature string both sides compare: argument and result type names.
pub(crate) fn signature<Args, R>() -> (String, String) {
    (type_name::<Args>().to_owned(), type_name::<R>().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of<F: TaskRef<A, R, M>, A, R, M>(f: F) -> String {
        f.task_name().into_owned()
    }

    fn plain(x: u64) -> u64 {
        x
    }

    #[test]
    fn closures_and_function_pointers_are_unnamed() {
        let a = |x: u64| x + 1;
        let b = |x: u64| x * 100;
        // The bug this guards against: two closures, one name.
        assert_eq!(name_of(a), name_of(b));
        assert_eq!(unnamed_kind(&name_of(a)), Some("a closure"));
        assert_eq!(
            unnamed_kind(type_name::<&fn()>()),
            Some("a function pointer")
        );
        let p: fn(u64) -> u64 = plain;
        assert_eq!(unnamed_kind(&name_of(p)), Some("a function pointer"));
        assert_eq!(unnamed_kind(&name_of(plain)), None);
        // A function item defined inside a closure has a name of its own.
        assert_eq!(unnamed_kind("crate::f::{{closure}}::inner"), None);
        assert_eq!(unnamed_kind("square"), None);
    }
}

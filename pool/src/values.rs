//! What may cross the pipe: the serde bounds on a task's arguments and
//! results, as traits that tell, when a bound is not met, what to write
//! instead (`#[diagnostic::on_unimplemented]`).
//!
//! Each trait is implemented for every type that meets its bound, so it
//! changes nothing for code that compiles; it only changes the error of
//! code that does not:
//!
//! | trait | where | means |
//! |---|---|---|
//! | [`TaskArg`] | `Registry` | the worker decodes the argument: `DeserializeOwned + 'static` |
//! | [`TaskOutput`] | `Registry` | the worker encodes the result: `Serialize + 'static` |
//! | [`CallArg`] | the pool's calls, `Builder` | the caller encodes the argument: `Serialize` |
//! | [`CallOutput`] | the pool's calls | the caller decodes the result: `DeserializeOwned` |
//!
//! A borrowed type (`&str`, `&[u8]`) implements `Deserialize` for one
//! lifetime only, not for every one as decoding into a fresh buffer needs.
//! That is a lifetime error, found after trait selection, which no
//! `on_unimplemented` message can reach: instead its error names
//! [`OwnedData`], the trait carrying the "for every lifetime" bound, as in
//! "`&str` must implement `OwnedData<'0>`, for any lifetime `'0`". The
//! fix is an owned type: `String`, `Vec<u8>`.

use serde::{Deserialize, Serialize};

/// Data that owns what it decodes from: `Deserialize<'de>` for the
/// lifetime `'de` of the bytes, which must hold for every `'de`.
///
/// When a compiler error says "`&str` must implement `OwnedData<'0>`, for
/// any lifetime `'0`", a task or a call uses a **borrowed** type (`&str`,
/// `&[u8]`, `&T`, or a struct borrowing one) as an argument or a result.
/// A value that crosses the pipe is decoded into a buffer that is gone
/// once it is decoded, so nothing can borrow from it: take the owned type
/// instead (`String`, `Vec<u8>`, `T`).
///
/// ```compile_fail
/// fn shout(s: &str) -> String { s.to_uppercase() } // take `s: String`
/// let tasks = procpool::Registry::new().task(shout);
/// ```
pub trait OwnedData<'de>: Deserialize<'de> {}

impl<'de, T: Deserialize<'de>> OwnedData<'de> for T {}

/// A type a task can take as its argument: the worker decodes it
/// (`serde::de::DeserializeOwned + 'static`). Several arguments travel
/// as one tuple, `(A, B)`, of such types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task's argument: a worker decodes it with serde",
    label = "not decodable",
    note = "derive `serde::Deserialize` (with `serde::Serialize`, for the caller) for types of your own; several arguments travel as one tuple, each element such a type",
    note = "a borrowed parameter (`&str`, `&[u8]`, `&T`) cannot be decoded into: take `String`, `Vec<u8>` or `T` instead",
    note = "a task that takes its worker's state first (`&mut S` or `&S`) is registered with `Registry::task_with_state`"
)]
pub trait TaskArg: for<'de> OwnedData<'de> + 'static {}

#[diagnostic::do_not_recommend]
impl<T: for<'de> OwnedData<'de> + 'static> TaskArg for T {}

/// A type a task can return: the worker encodes it (`serde::Serialize +
/// 'static`). A task's own error travels inside its result:
/// `Result<T, E>` with both serializable.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task's result: a worker encodes it with serde",
    label = "not encodable",
    note = "derive `serde::Serialize` (with `serde::Deserialize`, for the caller) for types of your own; an error type too, in a `Result<T, E>`"
)]
pub trait TaskOutput: Serialize + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + 'static> TaskOutput for T {}

/// A type a caller can send as a task's argument: the pool encodes it
/// (`serde::Serialize`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent as a task's argument: the pool encodes it with serde",
    label = "not encodable",
    note = "derive `serde::Serialize` (with `serde::Deserialize`, for the worker) for types of your own",
    note = "a task of several arguments takes them as one tuple: `pool.apply(add, (2, 3))`, or `pool.starmap(add, pairs)`"
)]
pub trait CallArg: Serialize {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized> CallArg for T {}

/// A type a caller can receive as a task's result: the pool decodes it
/// (`serde::de::DeserializeOwned`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be received as a task's result: the pool decodes it with serde",
    label = "not decodable",
    note = "derive `serde::Deserialize` (with `serde::Serialize`, for the worker) for types of your own",
    note = "a borrowed result (`&str`, `&[u8]`) cannot be decoded into: return `String` or `Vec<u8>`"
)]
pub trait CallOutput: for<'de> OwnedData<'de> {}

#[diagnostic::do_not_recommend]
impl<T: for<'de> OwnedData<'de>> CallOutput for T {}

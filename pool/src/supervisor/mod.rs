//! Starting, watching and ending worker processes, and the policy of when
//! to start them again. This module never talks to callers and decides no
//! task's outcome; the dispatcher asks it for spawns and kills.
//!
//! - `process.rs`: a worker process: spawn by exec, pidfd, reap, cached
//!   status;
//! - `kill.rs`: escalation: SIGTERM, grace, SIGKILL, to the worker, its
//!   group and its descendant tree;
//! - `respawn.rs`: restart intensity and backoff.

mod kill;
mod process;
mod respawn;

pub(crate) use process::{Launch, WorkerProcess};
pub(crate) use respawn::{Limit, Respawn};

//! Starting, watching and ending worker processes, and the policy of when
//! to start them again. This module never talks to callers and decides no
//! task's outcome; the dispatcher asks it for spawns and kills.
//!
//! - `launch.rs`: how a worker starts: exec, the zygote, or a thread;
//! - `process.rs`: a worker process: pidfd, signals, reap, cached status;
//! - `kill.rs`: escalation: SIGTERM, grace, SIGKILL, to the worker, its
//!   group and its descendant tree;
//! - `logs.rs`: workers' `log` records, emitted through this process's
//!   logger;
//! - `handshake.rs`: what a starting worker must show (its task list, its
//!   initializer's success) before it gets work;
//! - `respawn.rs`: restart intensity and backoff, and a new worker's index;
//! - `spawner.rs`: a second thread that starts workers beside the loop, so
//!   a start-up's workers start side by side;
//! - `zygote/`: the zygote start method: forking workers from a process
//!   that ran the initializer once, and falling back to exec.

pub(crate) mod handshake;
mod kill;
mod launch;
mod logs;
mod process;
mod respawn;
mod spawner;
mod zygote;

pub(crate) use kill::RELAY_SLACK;
pub(crate) use launch::{Launch, Spawned};
pub(crate) use logs::{forward_log, forward_remote_log};
pub(crate) use process::WorkerProcess;
pub(crate) use respawn::{Limit, Respawn, free_index};
pub(crate) use spawner::Spawner;
pub(crate) use zygote::{ZygoteWatch, Zygotes};

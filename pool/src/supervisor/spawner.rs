//! A second thread that starts workers, so that the workers of a start-up
//! (or several replacements due at once) start side by side.
//!
//! Starting a worker by exec blocks the thread that starts it until the
//! child has exec'd (`posix_spawn` shares the parent's memory until then):
//! about 0.2 ms here, of a start-up of about 1.5 ms. The pool's loop
//! starts one worker of a group itself and hands the others to this
//! thread, then waits for them all, so two starts cost one.
//!
//! **Why a thread that lives as long as the pool.** A worker dies with
//! the thread that started it, not with the process: `PR_SET_PDEATHSIG`
//! fires when the parent *thread* ends. A short-lived thread per start
//! would kill its workers as it ends. This one ends only when its owner
//! (the loop) drops it, after every worker is killed and reaped (the
//! dispatcher keeps it as its last field).

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::launch::{Launch, Spawned};
use crate::error::Error;

/// What the thread is asked to do: start worker `index` with `launch`.
struct Job {
    launch: Launch,
    index: usize,
    reply: Sender<Result<Spawned, Error>>,
}

/// The thread that starts workers beside the pool's loop.
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// A start handed to the spawner; [`Pending::wait`] gives its result.
#[derive(Debug)]
pub(crate) struct Pending(Receiver<Result<Spawned, Error>>);

impl Spawner {
    /// Starts the thread; `None` if the system refuses a thread (the caller
    /// then starts its workers one after another, as without it).
    pub(crate) fn start() -> Option<Spawner> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name("procpool-spawner".into())
            .stack_size(256 << 10)
            .spawn(move || {
                for job in rx {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job.launch.spawn(job.index)
                    }))
                    .unwrap_or_else(|payload| {
                        Err(Error::startup(format!(
                            "starting a worker panicked: {}",
                            crate::error::panic_message(&*payload)
                        )))
                    });
                    // The loop waits for every start it asked for; a result
                    // it cannot take (it is gone) drops the worker, which
                    // kills and reaps it.
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| log::warn!("procpool: cannot start the spawner thread: {e}"))
            .ok()?;
        Some(Spawner {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks the thread to start worker `index` with `launch`.
    pub(crate) fn spawn(&self, launch: &Launch, index: usize) -> Pending {
        let (reply, rx) = crossbeam_channel::bounded(1);
        let job = Job {
            launch: launch.clone(),
            index,
            reply,
        };
        let unsent = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|e| e.into_inner()),
            None => Some(job),
        };
        if let Some(job) = unsent {
            // The thread is gone (it cannot be: it ends only when dropped):
            // start the worker here instead.
            let _ = job.reply.send(job.launch.spawn(job.index));
        }
        Pending(rx)
    }
}

impl Pending {
    /// The start's result, once the thread has it.
    pub(crate) fn wait(self) -> Result<Spawned, Error> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(Error::startup("the spawner thread stopped")))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

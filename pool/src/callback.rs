//! The pool's callback thread: runs [`AsyncResult::on_complete`]
//! callbacks, one at a time, never on the dispatcher.
//!
//! A callback is a future (the handle awaited, then the user's function)
//! driven by a minimal executor: the thread polls a future when its waker
//! is woken, which happens when the dispatcher sends the job a message.
//! The thread starts with the first callback and ends when the pool and
//! every pending callback are gone. A panic in a callback is caught and
//! logged; that callback is dropped and the others go on.
//!
//! [`AsyncResult::on_complete`]: crate::AsyncResult::on_complete

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, ThreadId};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One callback: its future, until it completes, and the way back to the
/// thread's queue.
struct Call {
    future: Mutex<Option<Task>>,
    queue: Sender<Arc<Call>>,
}

impl Wake for Call {
    fn wake(self: Arc<Self>) {
        let queue = self.queue.clone();
        // The thread is gone only once the pool is: nothing to run then.
        let _ = queue.send(self);
    }
}

/// The callers' side of the callback thread (started on first use).
#[derive(Debug, Default)]
pub(crate) struct Callbacks {
    thread: Mutex<Option<(Sender<Arc<Call>>, ThreadId)>>,
}

impl Callbacks {
    /// Runs `future` on the callback thread.
    pub(crate) fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        let queue = self.queue();
        let call = Arc::new(Call {
            future: Mutex::new(Some(Box::pin(future))),
            queue: queue.clone(),
        });
        let _ = queue.send(call);
    }

    /// Returns once every callback woken so far has been polled: after the
    /// dispatcher has exited, every callback of the pool's work has run.
    /// Does nothing on the callback thread itself (a callback that joins
    /// the pool), or if no callback was ever registered.
    pub(crate) fn flush(&self) {
        let queue = match &*self.thread.lock() {
            Some((q, id)) if *id != thread::current().id() => q.clone(),
            _ => return,
        };
        let (done, wait) = crossbeam_channel::bounded(1);
        let call = Arc::new(Call {
            future: Mutex::new(Some(Box::pin(async move {
                let _ = done.send(());
            }))),
            queue: queue.clone(),
        });
        if queue.send(call).is_ok() {
            let _ = wait.recv();
        }
    }

    fn queue(&self) -> Sender<Arc<Call>> {
        let mut thread = self.thread.lock();
        if let Some((q, _)) = &*thread {
            return q.clone();
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = thread::Builder::new()
            .name("procpool-callbacks".into())
            .spawn(move || serve(rx))
            .expect("cannot start the pool's callback thread");
        *thread = Some((tx.clone(), handle.thread().id()));
        tx
    }
}

/// The thread: polls each woken callback; ends when every sender is gone.
/// Nothing that happens in one callback ends it: a panic, even one raised
/// while the first is logged (a logger that panics), is caught here.
fn serve(queue: Receiver<Arc<Call>>) {
    for call in queue {
        let _ = panic::catch_unwind(AssertUnwindSafe(|| poll(&call)));
    }
}

fn poll(call: &Arc<Call>) {
    let waker = Waker::from(call.clone());
    let mut cx = Context::from_waker(&waker);
    let mut slot = call.future.lock();
    let Some(future) = slot.as_mut() else {
        // Woken after it completed.
        return;
    };
    match panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
        Ok(Poll::Pending) => {}
        Ok(Poll::Ready(())) => *slot = None,
        Err(payload) => {
            // Done with it before anything else can go wrong.
            *slot = None;
            drop(slot);
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".into());
            // A payload whose Drop panics must not end the thread either.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            log::error!("procpool: a result callback panicked: {message}");
        }
    }
}

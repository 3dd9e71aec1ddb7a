//! The zygote: a worker process that runs the initializer once and then
//! forks workers on the pool's request (`StartMethod::Zygote`).
//!
//! Its control channel is a stream socket on its stdin and stdout. It
//! speaks the worker protocol there (the handshake, `Init`), plus `Fork`,
//! whose frame carries the new worker's pipes and progress counter as
//! descriptors (`SCM_RIGHTS`), and `Reap`. A fork happens only after a
//! count of this process's threads finds exactly one (see
//! `sys::fork_if_single_threaded`); otherwise the zygote answers
//! `NotForked::Threads` and the pool starts its workers by exec from then
//! on.
//!
//! The forked child drops the zygote's control socket, puts its own pipes
//! where an exec'd worker has them (descriptors 3 and 4, the pool's
//! lifeline next), leads a process group of its own, becomes a child
//! subreaper, and then serves like any worker, its state already in
//! memory. Descriptors the initializer opened stay open (the state may own
//! them); nothing the pool's process holds reaches a worker, as the zygote
//! closed everything it inherited when it started. The memory limit is the
//! zygote's own, inherited. Its parent is the
//! zygote, whose death must not end it, so it has no parent-death signal:
//! a small thread watches the pool's lifeline instead (a pipe only the
//! pool's process can write to, which hangs up when that process ends or
//! exec's).
//!
//! The zygote reaps a worker only when the pool asks (`Reap`), after the
//! pool has finished signalling it: until then the worker's pid, and so its
//! process group id, cannot be reused.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;
use procpool_protocol::frame::read_frame;
use procpool_protocol::{
    ExitReport, FromWorker, NotForked, ToWorker, decode_to_worker, encode_message,
};

use super::Registry;
use super::serve::{self, ServeOptions, Server, Stop, bad_parent};
use crate::sys::{self, FdSocket, Forked, ProtocolStdio, SharedCounter};

/// How often a zygote whose initializer asked for its children to be
/// reaped (SIGCHLD ignored, or a handler) reaps the helpers it started.
const HELPER_REAP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The zygote's serve loop; in a forked child, that worker's whole life.
/// `pool`: a pidfd for the pool's process, which every worker watches.
pub(crate) fn serve_zygote(
    registry: &Registry,
    stdio: ProtocolStdio,
    opts: ServeOptions,
    pool: OwnedFd,
) -> i32 {
    let max_frame = opts.max_frame;
    let ProtocolStdio { input, output } = stdio;
    let output = Arc::new(Mutex::new(output));
    serve::install_hooks(opts, &output);
    let mut input = BufReader::with_capacity(64 << 10, FdSocket::new(OwnedFd::from(input)));
    if let Err(code) = serve::handshake(registry, &output, &mut input, max_frame) {
        return code;
    }
    let mut server = Server::new(registry, None, output.clone(), max_frame);
    let mut forked: HashSet<u32> = HashSet::new();
    // What the initializer made of SIGCHLD, for the workers.
    let mut sigchld: Option<sys::ChildSignal> = None;
    let mut frame = Vec::new();
    let mut reply = Vec::new();
    loop {
        // Children that are not workers (the initializer's helpers) are
        // reaped here when the initializer asked for that (SIGCHLD ignored,
        // or a handler): a few times a second while the zygote waits.
        while sigchld.is_some_and(|s| s.changed()) && input.buffer().is_empty() {
            sys::reap_children_except(&forked);
            match input.get_ref().readable_within(HELPER_REAP_INTERVAL) {
                Ok(true) | Err(_) => break,
                Ok(false) => {}
            }
        }
        match read_frame(&mut input, max_frame, &mut frame) {
            Ok(true) => {}
            // The pool is done with the zygote. Its state is not dropped:
            // the forked workers hold copies of it, and a Drop acting on
            // what they share (a file, a directory) would pull it from
            // under them.
            Ok(false) => {
                std::mem::forget(server.take_state());
                return 0;
            }
            Err(e) => return bad_parent(&e.to_string()),
        }
        let (index, pid) = match decode_to_worker(&frame) {
            Ok(ToWorker::Init { task, arg }) => match server.init(task, arg) {
                // Workers must stay unreaped until the pool asks, whatever
                // the initializer did to SIGCHLD.
                Ok(()) => match sys::ChildSignal::keep_children_waitable() {
                    Ok(s) => {
                        sigchld = Some(s);
                        continue;
                    }
                    Err(e) => {
                        eprintln!("procpool zygote: cannot reset SIGCHLD: {e}");
                        return procpool_protocol::exit_code::SETUP_FAILED;
                    }
                },
                Err(Stop(code)) => return code,
            },
            Ok(ToWorker::Fork { index }) => (Some(index), None),
            Ok(ToWorker::Reap { pid }) => (None, Some(pid)),
            Ok(ToWorker::Run(_)) => return bad_parent("a zygote runs no batches"),
            Ok(ToWorker::Kill | ToWorker::Cancel { .. } | ToWorker::Go { .. }) => {
                return bad_parent("a zygote is no relay");
            }
            Err(e) => return bad_parent(&e.to_string()),
        };
        reply.clear();
        let mut pidfd = None;
        let msg = if let Some(pid) = pid {
            let exit = if forked.remove(&pid) {
                sys::reap_child(pid)
            } else {
                ExitReport::Unknown
            };
            FromWorker::Reaped { pid, exit }
        } else {
            let index = index.expect("a fork request");
            let Some(fds) = input.get_mut().take_fds(4) else {
                return bad_parent("a fork request came without its four descriptors");
            };
            // (No initializer ran: SIGCHLD is as the program's main left it.)
            if sigchld.is_none() {
                match sys::ChildSignal::keep_children_waitable() {
                    Ok(s) => sigchld = Some(s),
                    Err(e) => {
                        eprintln!("procpool zygote: cannot reset SIGCHLD: {e}");
                        return procpool_protocol::exit_code::SETUP_FAILED;
                    }
                }
            }
            match sys::fork_if_single_threaded() {
                Ok(Forked::Child) => {
                    drop(input);
                    let sigchld = sigchld.expect("set before the fork");
                    let to_watch = (pool, sigchld);
                    return become_worker(
                        registry, server, output, fds, index, to_watch, max_frame,
                    );
                }
                Ok(Forked::Parent(pid)) => match sys::pidfd_open(pid) {
                    Some(fd) => {
                        forked.insert(pid);
                        pidfd = Some(fd);
                        FromWorker::Forked { pid }
                    }
                    None => {
                        // No pidfd, no supervision: the pool cannot use it.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        sys::reap_child(pid);
                        FromWorker::NotForked(NotForked::Failed(
                            "cannot open a pidfd for the forked worker".into(),
                        ))
                    }
                },
                Ok(Forked::Threads(n)) => {
                    FromWorker::NotForked(NotForked::Threads(n.min(u32::MAX as usize) as u32))
                }
                Err(e) => FromWorker::NotForked(NotForked::Failed(e.to_string())),
            }
        };
        if encode_message(&mut reply, &msg, max_frame).is_err() {
            return procpool_protocol::exit_code::STREAM_BROKEN;
        }
        let out = output.lock();
        let fds: Vec<_> = pidfd.iter().map(|f| f.as_fd()).collect();
        if sys::send_with_fds(out.as_fd(), &reply, &fds).is_err() {
            return procpool_protocol::exit_code::STREAM_BROKEN;
        }
    }
}

/// In the forked child: drops the zygote's descriptors, takes the ones the
/// pool sent, and serves as worker `index`.
fn become_worker(
    registry: &Registry,
    mut zygote: Server<'_>,
    output: Arc<Mutex<File>>,
    fds: Vec<OwnedFd>,
    index: u32,
    (pool, sigchld): (OwnedFd, sys::ChildSignal),
    max_frame: u32,
) -> i32 {
    let state = zygote.take_state();
    drop(zygote);
    let mut fds = fds.into_iter();
    let (Some(input), Some(worker_out), Some(progress), Some(lifeline)) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        unreachable!("four descriptors were taken");
    };
    // The zygote's end of its socket closes here, in this process only.
    *output.lock() = File::from(worker_out);
    let setup = || -> std::io::Result<(SharedCounter, File, OwnedFd)> {
        let counter = SharedCounter::from_fd(&progress)?;
        drop(progress);
        let (input, lifeline) = sys::settle_forked_fds(input, &mut output.lock(), lifeline)?;
        sys::own_process_group()?;
        sys::become_subreaper()?;
        sigchld.restore()?;
        Ok((counter, input, lifeline))
    };
    let (counter, input, lifeline) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procpool worker: a forked worker cannot set itself up: {e}");
            return procpool_protocol::exit_code::SETUP_FAILED;
        }
    };
    if let Err(e) = sys::die_with_pool(pool, lifeline) {
        eprintln!("procpool worker: cannot watch the pool: {e}");
        return procpool_protocol::exit_code::SETUP_FAILED;
    }
    super::state::set_process_index(index as usize);
    let share = super::shares_results();
    let code = serve::serve_loop(
        registry,
        input,
        output,
        Some(&counter),
        max_frame,
        share,
        state,
    );
    // Whatever the tasks started and left behind ends with the worker.
    sys::kill_descendants_of_self();
    code
}

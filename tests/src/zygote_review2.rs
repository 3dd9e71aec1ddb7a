//! Tasks and initializers of the second hostile review of the zygote start
//! method (`tests/zygote/review2.rs`).

use std::time::Duration;

/// Starts `sleep 1000` (a helper of the initializer, in the process group
/// of the process that runs it), writes its pid to `pidfile`, then aborts:
/// an initializer that starts a helper and then crashes.
pub fn init_spawn_child_then_abort(pidfile: String) {
    crate::init_spawn_child(pidfile);
    std::process::abort();
}

extern "C" fn reap_every_child(_: libc::c_int) {
    // SAFETY: waitpid and errno access are async-signal-safe; errno is
    // saved and restored around them.
    unsafe {
        let saved = *libc::__errno_location();
        while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        *libc::__errno_location() = saved;
    }
}

/// Installs a SIGCHLD handler that reaps every exited child
/// (`waitpid(-1, WNOHANG)` in a loop), the usual way a program that
/// starts helpers keeps zombies away.
pub fn init_reap_children_in_handler(_: u64) {
    // SAFETY: a zeroed sigaction is valid; sigaction installs a handler
    // that only calls async-signal-safe functions.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = reap_every_child as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()), 0);
    }
}

/// Moves this worker into the existing process group `pgid` (of the same
/// session) and returns its new process group id: a task that joins a
/// terminal's job, say. The worker stays there.
pub fn join_group(pgid: u32) -> i32 {
    // SAFETY: setpgid and getpgrp only change and read this process's own
    // process group.
    unsafe {
        assert_eq!(libc::setpgid(0, pgid as i32), 0, "setpgid failed");
        libc::getpgrp()
    }
}

/// What SIGCHLD's disposition is in this worker: `default`, `ignore`, or
/// `handler`, plus ` nocldwait` if that flag is set.
pub fn sigchld_disposition() -> String {
    // SAFETY: with a null new action, sigaction only fills `old`.
    let old = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old);
        old
    };
    let what = if old.sa_sigaction == libc::SIG_DFL {
        "default"
    } else if old.sa_sigaction == libc::SIG_IGN {
        "ignore"
    } else {
        "handler"
    };
    if old.sa_flags & libc::SA_NOCLDWAIT != 0 {
        format!("{what} nocldwait")
    } else {
        what.to_owned()
    }
}

/// Starts `sh -c 'exit 3'` and `true` and waits for each, as a task that
/// runs a tool would: how each wait went.
pub fn children_statuses() -> Vec<String> {
    let mut out = Vec::new();
    for args in [["-c", "exit 3"], ["-c", "true"]] {
        let r = std::process::Command::new("sh").args(args).status();
        out.push(match r {
            Ok(s) => format!("{:?}", s.code()),
            Err(e) => format!("error {:?}", e.raw_os_error()),
        });
    }
    out
}

/// Sleeps `ms` milliseconds, then returns this worker's pid.
pub fn pid_after_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Sets SIGCHLD to SIG_IGN (so the kernel reaps this process's children)
/// and starts `sleep <secs>`, a short-lived helper never waited for: with
/// SIGCHLD ignored it leaves no zombie when it ends.
pub fn init_ignore_sigchld_and_spawn_short(secs: String) {
    crate::init_ignore_sigchld(0);
    let child = std::process::Command::new("sleep")
        .arg(secs)
        .spawn()
        .expect("spawn sleep");
    std::mem::forget(child);
}

/// Ends the calling (main) thread alone with the raw `exit` system call,
/// as a C library's `pthread_exit` in the main thread would: a process
/// with no other thread ends with it.
pub fn exit_main_thread() {
    // SAFETY: SYS_exit ends only the calling thread; nothing of it is
    // used afterwards.
    unsafe {
        libc::syscall(libc::SYS_exit, 0);
    }
}

//! Tasks for the zygote start method's tests (`tests/zygote/`).

/// The pid of the process that started this worker: the zygote for a
/// forked worker, the pool's process for an exec'd one.
pub fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// An initializer that leaves a thread running (as a library starting its
/// thread pool would): a zygote that ran it must not fork.
pub fn init_start_thread(name: String) {
    std::thread::Builder::new()
        .name(name)
        .spawn(|| {
            loop {
                std::thread::park();
            }
        })
        .expect("start the initializer's thread");
}

/// An initializer that prints `marker` without a newline: it stays in
/// stdout's buffer, which a fork would copy into every worker.
pub fn init_print_partial(marker: String) {
    print!("{marker}");
}

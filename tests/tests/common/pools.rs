//! Pools of fault workers, shared by the test binaries that include this
//! file; each says how its workers start (`crate::START`).

use std::time::Duration;

use procpool::Pool;

/// The fault-injecting worker program of this package.
pub(crate) const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

/// A hang ceiling for one test: generous, as these machines are noisy.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// A builder of `n` fault workers, started the way this test binary
/// starts them ([`START`](crate::START)).
pub(crate) fn builder(n: usize) -> procpool::Builder {
    Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .start_method(crate::START)
}

/// A pool of `n` fault workers.
pub(crate) fn pool(n: usize) -> Pool {
    builder(n).build().expect("the fault worker pool starts")
}

/// A builder of `n` fault workers started through `env -u
/// PROCPOOL_PROGRESS`: a launcher that strips the environment, so they never
/// attach to their shared counter.
pub(crate) fn counterless(n: usize) -> procpool::Builder {
    Pool::builder()
        .workers(n)
        .worker_program("/usr/bin/env")
        .worker_args([
            std::ffi::OsString::from("-u"),
            "PROCPOOL_PROGRESS".into(),
            FAULT_WORKER.into(),
        ])
}

/// A pool of `n` fault workers whose `record` tasks append to `file`.
pub(crate) fn recording_pool(n: usize, file: &std::path::Path) -> Pool {
    builder(n)
        .initializer(procpool_tests::init_store, file.display().to_string())
        .build()
        .expect("the recording pool starts")
}

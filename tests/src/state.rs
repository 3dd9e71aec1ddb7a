//! Tasks and state for the per-worker state tests
//! (`tests/integration/worker_state.rs`).

use serde::{Deserialize, Serialize};

/// A worker's state: counts the tasks that used it, and when dropped
/// writes that count to `<dir>/dropped-<pid>-<index>`.
#[derive(Debug)]
pub struct Tally {
    dir: String,
    index_at_init: Option<usize>,
    runs: u64,
}

/// What [`tally`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyReport {
    /// The worker's pid.
    pub pid: u32,
    /// Its index, as `procpool::worker::index()` says in the task.
    pub index: Option<usize>,
    /// Its index as the initializer saw it.
    pub index_at_init: Option<usize>,
    /// How many tasks have used this state, this one included.
    pub runs: u64,
}

/// The marker file a [`Tally`] of worker `pid` with `index` writes when
/// dropped, in `dir`.
pub fn tally_marker(dir: &std::path::Path, pid: u32, index: Option<usize>) -> std::path::PathBuf {
    dir.join(format!("dropped-{pid}-{index:?}"))
}

impl Drop for Tally {
    fn drop(&mut self) {
        let path = tally_marker(
            std::path::Path::new(&self.dir),
            std::process::id(),
            self.index_at_init,
        );
        // A test that is over may have removed the directory.
        let _ = std::fs::write(path, self.runs.to_string());
    }
}

/// A state-making initializer: a fresh [`Tally`] whose drop marker goes
/// to directory `dir`.
pub fn start_tally(dir: String) -> Tally {
    Tally {
        dir,
        index_at_init: procpool::worker::index(),
        runs: 0,
    }
}

/// A state-making initializer that fails with `reason`.
pub fn start_tally_or_fail(reason: String) -> Result<Tally, String> {
    Err(reason)
}

/// Counts one more use of the worker's state and reports it.
pub fn tally(state: &mut Tally) -> TallyReport {
    state.runs += 1;
    TallyReport {
        pid: std::process::id(),
        index: procpool::worker::index(),
        index_at_init: state.index_at_init,
        runs: state.runs,
    }
}

/// Another kind of worker state.
#[derive(Debug)]
pub struct Label(pub String);

/// A state-making initializer of a [`Label`].
pub fn start_label(label: String) -> Label {
    Label(label)
}

/// The worker's label, followed by `suffix`.
pub fn label_with(state: &Label, suffix: String) -> String {
    format!("{}{suffix}", state.0)
}

/// This worker's pid and index.
pub fn worker_index() -> (u32, Option<usize>) {
    (std::process::id(), procpool::worker::index())
}

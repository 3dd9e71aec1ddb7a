//! A worker's `log` records (and a zygote's), emitted in the parent.

use procpool_protocol::LogRecord;

/// Emits a worker's `log` record through this process's logger, tagged
/// with the worker's pid and the task it is running.
pub(crate) fn forward_log(pid: u32, task: Option<&str>, record: LogRecord) {
    emit(format_args!("{pid}"), task, record);
}

/// A remote worker's record: tagged with its pid on its host, and the
/// host (its launcher's pid here names nothing there).
pub(crate) fn forward_remote_log(pid: u32, host: &str, task: Option<&str>, record: LogRecord) {
    emit(format_args!("{pid} on {host}"), task, record);
}

fn emit(worker: std::fmt::Arguments<'_>, task: Option<&str>, record: LogRecord) {
    let level = match record.level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    if level > log::max_level() {
        return;
    }
    let task = task.map(|t| format!(" `{t}`")).unwrap_or_default();
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&record.target)
            .file(record.file.as_deref())
            .line(record.line)
            .args(format_args!("[worker {worker}{task}] {}", record.message))
            .build(),
    );
}

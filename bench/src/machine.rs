//! The machine a run was made on, named at the top of the output.

/// `CPU model, N CPUs, Linux RELEASE`, from `/proc/cpuinfo` and
/// `/proc/sys/kernel/osrelease`.
pub(crate) fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let usable = if usable == cpus {
        String::new()
    } else {
        format!(" ({usable} usable by this process)")
    };
    format!("{model}, {cpus} CPUs{usable}, Linux {kernel}")
}

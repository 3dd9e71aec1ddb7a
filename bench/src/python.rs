//! The Python peers (`peers/python_pool.py`): `multiprocessing.Pool` with
//! the spawn, fork and forkserver start methods, and
//! `concurrent.futures.ProcessPoolExecutor`, on workloads a–d.

use std::process::Command;

/// The script's JSON, or `None` (with a note) when it could not run.
pub(crate) fn run(quick: bool) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/python_pool.py");
    eprintln!(
        "procpool-bench: measuring Python's multiprocessing.Pool (spawn, fork, forkserver) \
         and ProcessPoolExecutor"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    if quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            eprintln!(
                "procpool-bench: the Python peer failed ({}); skipping it:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("procpool-bench: python3 is not available ({e}); skipping the Python peer");
            None
        }
    }
}

/// The raw text after `"key":` in a flat JSON object, up to the next
/// `,` or `}`.
fn json_raw<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// The number after `"key":` in a flat JSON object.
pub(crate) fn json_number(json: &str, key: &str) -> Option<f64> {
    json_raw(json, key)?.parse().ok()
}

/// The (escape-free) string after `"key":` in a flat JSON object.
pub(crate) fn json_string(json: &str, key: &str) -> Option<String> {
    let raw = json_raw(json, key)?;
    Some(raw.strip_prefix('"')?.strip_suffix('"')?.to_string())
}

/// procpool's figures for workloads a–d, in the units the script reports.
pub(crate) struct Ours {
    pub(crate) startup_s: f64,
    pub(crate) apply_p50_s: f64,
    pub(crate) map_items_per_s: f64,
    pub(crate) imap_items_per_s: f64,
}

/// The table of every Python peer on a–d beside procpool, each cell with
/// procpool's advantage (the peer's time over ours, or our rate over the
/// peer's).
pub(crate) fn peers_table(json: &str, ours: &Ours) -> String {
    let executor = format!(
        "ProcessPoolExecutor ({})",
        json_string(json, "executor_start_method").unwrap_or_else(|| "?".into())
    );
    let peers = [
        ("", "Pool, spawn".to_string()),
        ("fork_", "Pool, fork".to_string()),
        ("forkserver_", "Pool, forkserver".to_string()),
        ("executor_", executor),
    ];
    let us = |s: f64| format!("{:.1} µs", s * 1e6);
    let ms = |s: f64| format!("{:.2} ms", s * 1e3);
    let rate = |r: f64| format!("{r:.0}/s");
    type Fmt<'a> = &'a dyn Fn(f64) -> String;
    // (name, key, ours, format, lower is better)
    let workloads: [(&str, &str, f64, Fmt, bool); 4] = [
        (
            "a. start-up, 2 workers + first result",
            "startup_s",
            ours.startup_s,
            &ms,
            true,
        ),
        (
            "b. apply p50 (executor: submit().result())",
            "apply_p50_s",
            ours.apply_p50_s,
            &us,
            true,
        ),
        (
            "c. map x*x, Pool.map's default chunk size",
            "map_items_per_s",
            ours.map_items_per_s,
            &rate,
            false,
        ),
        (
            "d. imap_unordered, chunk size 1 (executor: map, chunksize=1)",
            "imap_unordered_items_per_s",
            ours.imap_items_per_s,
            &rate,
            false,
        ),
    ];
    let mut out = format!(
        "| workload | procpool | {} |\n|---|---|{}\n",
        peers
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(peers.len())
    );
    for (name, key, ours, fmt, lower_better) in workloads {
        let cells: Vec<String> = peers
            .iter()
            .map(
                |(prefix, _)| match json_number(json, &format!("{prefix}{key}")) {
                    Some(p) => {
                        let adv = if lower_better { p / ours } else { ours / p };
                        format!("{} ({adv:.1}×)", fmt(p))
                    }
                    None => "n/a".into(),
                },
            )
            .collect();
        out += &format!("| {name} | {} | {} |\n", fmt(ours), cells.join(" | "));
    }
    out
}

/// Python's `Pool` (spawn, 2 workers) kept running beside the harness: one
/// map of x*x per [`round`](Self::round) (row c), one `imap_unordered`
/// with chunk size 1 per [`imap`](Self::imap) (row d), one start-up of a
/// new pool and its first result per [`startup`](Self::startup) (row a). The
/// harness takes its rounds and ours in turns, so both see the machine at
/// the same speed.
pub(crate) struct TurnPeer {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl TurnPeer {
    /// Starts the peer, its pool warmed up; `None` (with a note) when it
    /// cannot run.
    pub(crate) fn start(items: u64) -> Option<Self> {
        use std::io::BufRead;
        use std::process::Stdio;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/python_pool.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--serve-map")
            .arg(items.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| eprintln!("procpool-bench: no Python map peer to take turns with: {e}"))
            .ok()?;
        let stdout = child.stdout.take()?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => Some(Self { child, lines }),
            _ => {
                eprintln!("procpool-bench: the Python map peer did not start");
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// One `Pool.map` of x*x: its rate, in items per second.
    pub(crate) fn round(&mut self) -> Option<f64> {
        self.ask(b"map\n")
    }

    /// One `imap_unordered` of x*x over `items` with chunk size 1: its
    /// rate, in items per second.
    pub(crate) fn imap(&mut self, items: u64) -> Option<f64> {
        self.ask(format!("imap {items}\n").as_bytes())
    }

    /// One start-up of a new `Pool(2)` and its first result, in seconds.
    pub(crate) fn startup(&mut self) -> Option<f64> {
        self.ask(b"startup\n")
    }

    fn ask(&mut self, line: &[u8]) -> Option<f64> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut()?;
        stdin.write_all(line).ok()?;
        stdin.flush().ok()?;
        self.lines.next()?.ok()?.trim().parse().ok()
    }
}

/// Medians of `rounds` of ours and of the peer's, taken in turns (who goes
/// first alternates), and the median of the pairs' `ratio(ours, theirs)`;
/// the peer's are `None` if it gave none.
pub(crate) struct Turns {
    pub(crate) ours: f64,
    pub(crate) theirs: Option<f64>,
    pub(crate) ratio: Option<f64>,
}

/// Runs `rounds` of `ours` and of `theirs` in turns (see [`Turns`]).
pub(crate) fn in_turns(
    rounds: usize,
    mut ours: impl FnMut() -> f64,
    mut theirs: impl FnMut() -> Option<f64>,
    ratio: impl Fn(f64, f64) -> f64,
) -> Turns {
    let (mut ours_all, mut theirs_all, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut their = None;
        if round % 2 == 1 {
            their = theirs();
        }
        let our = ours();
        if round % 2 == 0 {
            their = theirs();
        }
        ours_all.push(our);
        if let Some(t) = their {
            theirs_all.push(t);
            pairs.push(ratio(our, t));
        }
    }
    let median = |xs: Vec<f64>| (!xs.is_empty()).then(|| crate::median(xs));
    Turns {
        ours: crate::median(ours_all),
        theirs: median(theirs_all),
        ratio: median(pairs),
    }
}

impl Drop for TurnPeer {
    fn drop(&mut self) {
        // EOF on its stdin ends the peer (and its pool).
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

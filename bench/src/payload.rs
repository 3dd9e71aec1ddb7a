//! Row l: payloads. `apply` of a task that returns its argument, for
//! payloads of 4 KiB to 4 MiB carried as `Vec<u8>`, as
//! `serde_bytes::ByteBuf` and as `procpool::Bytes` (which, from 1 MiB,
//! travels through shared memory; and again with that turned off, on a
//! second pool), beside a raw pipe that echoes frames of the same sizes. The contenders take turns, size by
//! size, round after round, since this machine's speed drifts.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use procpool::{Bytes, Pool, Registry};
use serde_bytes::ByteBuf;

use crate::{Row, median};

fn echo_vec(data: Vec<u8>) -> Vec<u8> {
    data
}

fn echo_byte_buf(data: ByteBuf) -> ByteBuf {
    data
}

fn echo_bytes(data: Bytes) -> Bytes {
    data
}

/// Adds this module's tasks to `tasks`.
pub(crate) fn register(tasks: Registry) -> Registry {
    tasks.task(echo_vec).task(echo_byte_buf).task(echo_bytes)
}

pub(crate) struct Sizes {
    /// Payload sizes in bytes, each with its round trips per contender
    /// (split over the rounds).
    payloads: &'static [(usize, usize)],
    rounds: usize,
}

pub(crate) const FULL: Sizes = Sizes {
    payloads: &[
        (4 << 10, 3_000),
        (64 << 10, 900),
        (1 << 20, 90),
        (4 << 20, 30),
    ],
    rounds: 3,
};

pub(crate) const QUICK: Sizes = Sizes {
    payloads: &[(4 << 10, 60), (1 << 20, 6)],
    rounds: 2,
};

/// The raw pipe's child for row l: reads frames of a 4-byte length and
/// that many bytes, and writes each back whole once it has all of it.
pub(crate) fn raw_echo_frames() {
    // Unbuffered: std's stdout is line-buffered, which scans the bytes.
    let mut input = File::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let mut output = File::from(std::io::stdout().as_fd().try_clone_to_owned().unwrap());
    let mut frame = Vec::new();
    let mut len = [0u8; 4];
    while input.read_exact(&mut len).is_ok() {
        frame.clear();
        frame.extend_from_slice(&len);
        frame.resize(4 + u32::from_le_bytes(len) as usize, 0);
        if input.read_exact(&mut frame[4..]).is_err() || output.write_all(&frame).is_err() {
            break;
        }
    }
}

/// The echo child of [`raw_echo_frames`].
struct RawEcho {
    child: Child,
    to: std::process::ChildStdin,
    from: std::process::ChildStdout,
}

impl RawEcho {
    fn spawn() -> RawEcho {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--raw-echo-frames")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let to = child.stdin.take().unwrap();
        let from = child.stdout.take().unwrap();
        RawEcho { child, to, from }
    }

    /// Sends `frame` (length and payload) and reads its echo into `back`,
    /// of the same length.
    fn round_trip(&mut self, frame: &[u8], back: &mut [u8]) {
        self.to.write_all(frame).unwrap();
        self.from.read_exact(back).unwrap();
    }

    fn finish(self) {
        drop(self.to);
        let mut child = self.child;
        child.wait().unwrap();
    }
}

/// The contenders, in the order they take turns.
const KINDS: [&str; 5] = [
    "raw pipe",
    "Vec<u8>",
    "serde_bytes::ByteBuf",
    "procpool::Bytes",
    "procpool::Bytes, shared memory off",
];

/// The pools the contenders use: the default one, and one whose large
/// payloads stay on the pipe.
struct Pools {
    default: Pool,
    pipe_only: Pool,
}

/// A payload of `len` bytes, none zero, not periodic over a page.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

/// One round trip of `data` by contender `kind` (an index in [`KINDS`]),
/// in seconds; the echo is checked outside the timed span.
fn one(kind: usize, pools: &Pools, raw: &mut RawEcho, frame: &[u8], data: &[u8]) -> f64 {
    let pool = if kind == 4 {
        &pools.pipe_only
    } else {
        &pools.default
    };
    match kind {
        0 => {
            let mut back = vec![0u8; frame.len()];
            let t = Instant::now();
            raw.round_trip(frame, &mut back);
            let dt = t.elapsed().as_secs_f64();
            assert!(back == frame, "raw echo");
            dt
        }
        1 => {
            let arg = data.to_vec();
            let t = Instant::now();
            let back = pool.apply(echo_vec, arg).unwrap();
            let dt = t.elapsed().as_secs_f64();
            assert!(back == data, "Vec<u8> echo");
            dt
        }
        2 => {
            let arg = ByteBuf::from(data.to_vec());
            let t = Instant::now();
            let back = pool.apply(echo_byte_buf, arg).unwrap();
            let dt = t.elapsed().as_secs_f64();
            assert!(back[..] == *data, "ByteBuf echo");
            dt
        }
        _ => {
            let arg = Bytes::from(data);
            let t = Instant::now();
            let back = pool.apply(echo_bytes, arg).unwrap();
            let dt = t.elapsed().as_secs_f64();
            assert!(back[..] == *data, "Bytes echo");
            dt
        }
    }
}

/// Row l: per size, the median round trip of each contender, on a pool
/// of one worker and one echo child, both unpinned.
pub(crate) fn rows(sizes: &Sizes) -> Vec<Row> {
    let pools = Pools {
        default: Pool::builder().workers(1).build().unwrap(),
        pipe_only: Pool::builder()
            .workers(1)
            .shared_memory(false)
            .build()
            .unwrap(),
    };
    let mut raw = RawEcho::spawn();
    let workers = [pools.default.worker_pids(), pools.pipe_only.worker_pids()];
    // Per size, per contender: seconds per round trip.
    let mut times = vec![vec![Vec::new(); KINDS.len()]; sizes.payloads.len()];
    for _ in 0..sizes.rounds {
        for (s, &(len, trips)) in sizes.payloads.iter().enumerate() {
            let data = payload(len);
            let mut frame = (len as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&data);
            let n = trips.div_ceil(sizes.rounds);
            for (kind, samples) in times[s].iter_mut().enumerate() {
                // Warm-up: buffers grown, pages touched, on both sides.
                for _ in 0..n.div_ceil(10).max(2) {
                    one(kind, &pools, &mut raw, &frame, &data);
                }
                samples.extend((0..n).map(|_| one(kind, &pools, &mut raw, &frame, &data)));
            }
        }
    }
    let now = [pools.default.worker_pids(), pools.pipe_only.worker_pids()];
    assert_eq!(now, workers, "a worker was replaced");
    drop(pools);
    raw.finish();

    let mut rows = Vec::new();
    for (&(len, _), per_kind) in sizes.payloads.iter().zip(times) {
        let medians: Vec<f64> = per_kind.into_iter().map(median).collect();
        let size = if len >= 1 << 20 {
            format!("{} MiB", len >> 20)
        } else {
            format!("{} KiB", len >> 10)
        };
        let mb_s = |t: f64| len as f64 / t / 1e6;
        let cell = |t: f64| format!("{}, {:.0} MB/s", time(t), mb_s(t));
        for (kind, &t) in medians.iter().enumerate().skip(1) {
            rows.push(Row {
                name: format!(
                    "l. echo of {size} as {} (vs raw pipe), median round trip and MB/s each way",
                    KINDS[kind]
                ),
                ours: cell(t),
                peer: cell(medians[0]),
                ratio: format!("{:.2}× the pipe's MB/s", medians[0] / t),
                target: if kind == 3 {
                    "≥ 1.0× the pipe's MB/s"
                } else {
                    ""
                },
                ..Row::default()
            });
        }
        if len >= 1 << 20 {
            rows.push(Row {
                name: format!(
                    "l. echo of {size} as procpool::Bytes: through shared memory (vs the pipe, \
                     `shared_memory(false)`)"
                ),
                ours: time(medians[3]),
                peer: time(medians[4]),
                ratio: format!("{:.1}× faster", medians[4] / medians[3]),
                target: if len >= 4 << 20 { "≥ 3× faster" } else { "" },
                ..Row::default()
            });
        }
    }
    rows
}

fn time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

//! Row m: workers through ssh, on an `sshd` of the harness's own on a
//! loopback address (`procpool_tests::sshd`), against the floor of that
//! path: a raw ssh pipe round trip over the same shared connection, in the
//! same run; and `map` through ssh against the local `map`.
//!
//! - start-up of 4 workers on one host: the first pool (which opens the
//!   connection) and the second (which rides on the one that persists);
//! - `apply` round trip, p50, against the raw ssh pipe's;
//! - `map` of `map_items` `u64` on 2 ssh workers, against 2 local ones.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Instant;

use procpool::{Pool, Ssh};
use procpool_tests::sshd::Sshd;

use crate::{Row, median, square};

/// Sizes of row m.
pub(crate) struct Sizes {
    pub(crate) applies: usize,
    pub(crate) map_items: u64,
    pub(crate) rounds: usize,
    /// Pairs of `map` rounds (ssh, local).
    pub(crate) map_rounds: usize,
}

pub(crate) const FULL: Sizes = Sizes {
    applies: 3_000,
    map_items: 1_000_000,
    rounds: 3,
    map_rounds: 7,
};

pub(crate) const QUICK: Sizes = Sizes {
    applies: 100,
    map_items: 20_000,
    rounds: 1,
    map_rounds: 1,
};

fn host(sshd: &Sshd, control: &std::path::Path) -> Ssh {
    let mut ssh = Ssh::host(sshd.destination())
        .config_file("/dev/null")
        .control_dir(control);
    for (k, v) in sshd.ssh_options() {
        ssh = ssh.option(k, v);
    }
    ssh
}

/// The rows, or one row saying why there are none.
pub(crate) fn rows(sizes: &Sizes) -> Vec<Row> {
    let sshd = match Sshd::start() {
        Ok(s) => s,
        Err(reason) => {
            return vec![Row {
                name: "m. workers through ssh".into(),
                ours: format!("not measured: {reason}"),
                ..Row::default()
            }];
        }
    };
    let control = sshd.dir().join("ctl");
    let ms = |s: f64| format!("{:.1} ms", s * 1e3);
    let us = |s: f64| format!("{:.1} µs", s * 1e6);
    let rate = |r: f64| format!("{:.0}/s", r);

    // Start-up: the first pool opens the connection, the next ride on it.
    let startup = |n: usize| {
        let t = Instant::now();
        let pool = Pool::builder()
            .workers(0)
            .remote(host(&sshd, &control).workers(n))
            .build()
            .unwrap();
        pool.apply(square, 3).unwrap();
        let dt = t.elapsed().as_secs_f64();
        drop(pool);
        dt
    };
    let first = startup(4);
    let second = median((0..sizes.rounds.max(3)).map(|_| startup(4)).collect());

    // apply over ssh, and the raw pipe over the same shared connection.
    let pool = Pool::builder()
        .workers(0)
        .remote(host(&sshd, &control).workers(1))
        .build()
        .unwrap();
    pool.apply(square, 1).unwrap();
    let lat: Vec<f64> = (0..sizes.applies as u64)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(pool.apply(square, i).unwrap());
            t.elapsed().as_secs_f64()
        })
        .collect();
    drop(pool);
    let raw = raw_ssh_round_trips(&sshd, &control, sizes.applies);
    let (apply_p50, raw_p50) = (median(lat), median(raw));

    // map through ssh (2 workers) against the local map (2 workers),
    // interleaved round by round; the ratio is the median of the pairs'.
    let remote = Pool::builder()
        .workers(0)
        .remote(host(&sshd, &control).workers(2))
        .build()
        .unwrap();
    let local = Pool::builder().workers(2).build().unwrap();
    let (mut remote_rates, mut local_rates) = (Vec::new(), Vec::new());
    for _ in 0..sizes.map_rounds {
        for (pool, rates) in [(&remote, &mut remote_rates), (&local, &mut local_rates)] {
            let t = Instant::now();
            let v = pool.map(square, 0..sizes.map_items).unwrap();
            rates.push(sizes.map_items as f64 / t.elapsed().as_secs_f64());
            assert_eq!(v.len() as u64, sizes.map_items);
        }
    }
    drop((remote, local));
    let pairs = remote_rates
        .iter()
        .zip(&local_rates)
        .map(|(r, l)| r / l)
        .collect();
    let map_ratio = median(pairs);
    let (remote_rate, local_rate) = (median(remote_rates), median(local_rates));

    vec![
        Row {
            name: "m. ssh start-up, 4 workers + first result: first pool (opens the connection)"
                .into(),
            ours: ms(first),
            ..Row::default()
        },
        Row {
            name: "m. ssh start-up, 4 workers + first result: next pool (shared connection)".into(),
            ours: ms(second),
            peer: ms(first),
            ratio: format!("{:.1}× faster", first / second),
            ..Row::default()
        },
        Row {
            name: "m. apply p50 through ssh (vs raw ssh pipe p50, same connection)".into(),
            ours: us(apply_p50),
            peer: us(raw_p50),
            ratio: format!("{:.2}× the floor", apply_p50 / raw_p50),
            target: "≤ 1.5× the raw ssh pipe",
            ..Row::default()
        },
        Row {
            name: "m. map x*x of u64 on 2 ssh workers (vs 2 local)".into(),
            ours: rate(remote_rate),
            peer: rate(local_rate),
            ratio: format!("{map_ratio:.2} of local"),
            target: "≥ 0.5 of local",
            ..Row::default()
        },
    ]
}

/// Round trips of a 12-byte frame through this program's `--raw-echo`
/// started on the host by ssh, over the shared connection the pools use.
fn raw_ssh_round_trips(sshd: &Sshd, control: &std::path::Path, n: usize) -> Vec<f64> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = sshd.ssh_command_with(&[
        ("ControlMaster", "auto"),
        ("ControlPath", &format!("{}/%C", control.display())),
        ("ControlPersist", "60"),
        ("RequestTTY", "no"),
    ]);
    let mut child = cmd
        .arg(format!("exec '{}' --raw-echo", exe.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    let mut frame = [0u8; 12];
    frame[..4].copy_from_slice(&8u32.to_le_bytes());
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 + 20 {
        frame[4..].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        to.write_all(&frame).unwrap();
        let mut back = [0u8; 12];
        from.read_exact(&mut back).unwrap();
        if i >= 20 {
            lat.push(t.elapsed().as_secs_f64());
        }
        assert_eq!(u64::from_le_bytes(back[4..].try_into().unwrap()), square(i));
    }
    drop(to);
    child.wait().unwrap();
    lat
}

//! Row m of the harness alone (workers through ssh on an `sshd` of its
//! own, against the raw ssh pipe and local workers), measured as
//! `main.rs` does:
//!
//! ```sh
//! cargo run --release -p procpool-bench --example ssh_rows [-- --quick]
//! ```

use procpool::Registry;

#[path = "../src/remote.rs"]
mod remote;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One line of the table, as `main.rs` prints it.
#[derive(Default)]
struct Row {
    name: String,
    ours: String,
    cpu: String,
    peer: String,
    ratio: String,
    target: &'static str,
}

fn main() {
    let tasks = Registry::new().task(square);
    procpool::serve_if_worker(&tasks);
    if std::env::args().any(|a| a == "--raw-echo") {
        raw_echo();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rows = remote::rows(if quick { &remote::QUICK } else { &remote::FULL });
    println!("| workload | procpool | CPU | peer | ratio | target |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name, r.ours, r.cpu, r.peer, r.ratio, r.target
        );
    }
}

/// The raw pipe's far end: answers each 12-byte frame with the square of
/// its number (as `placement::raw_echo`).
fn raw_echo() {
    use std::io::{Read, Write};
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut frame = [0u8; 12];
    while input.read_exact(&mut frame).is_ok() {
        let x = u64::from_le_bytes(frame[4..].try_into().unwrap());
        frame[4..].copy_from_slice(&square(x).to_le_bytes());
        if output
            .write_all(&frame)
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
}

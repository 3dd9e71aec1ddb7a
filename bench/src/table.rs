//! What the harness and its examples (`examples/ssh_rows.rs`) share: the
//! trivial task, the median, a line of the table, and the raw pipe's far
//! end.

use std::io::{Read, Write};

/// The trivial task of rows b, c, k and m.
pub(crate) fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One line of the table.
#[derive(Default)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) ours: String,
    /// CPU time (user + sys) of the parent and the workers.
    pub(crate) cpu: String,
    pub(crate) peer: String,
    pub(crate) ratio: String,
    pub(crate) target: &'static str,
}

/// Prints `rows` as the table's markdown, header first.
pub(crate) fn print(rows: Vec<Row>) {
    println!("| workload | procpool | CPU, parent + workers | peer | ratio | target |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name, r.ours, r.cpu, r.peer, r.ratio, r.target
        );
    }
}

/// The raw floor's child (`--raw-echo`): echoes 12-byte frames (4-byte
/// length + u64), the u64 squared.
pub(crate) fn raw_echo() {
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

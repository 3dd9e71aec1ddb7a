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
#[path = "../src/table.rs"]
mod table;

use table::{Row, median, raw_echo, square};

fn main() {
    let tasks = Registry::new().task(square);
    procpool::serve_if_worker(&tasks);
    if std::env::args().any(|a| a == "--raw-echo") {
        raw_echo();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rows = remote::rows(if quick { &remote::QUICK } else { &remote::FULL });
    table::print(rows);
}

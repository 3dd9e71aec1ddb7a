//! A program with one remote worker, kept busy until the program is
//! killed: `remote-host FAULT_WORKER launcher PREFIX...` (a command
//! prefix) or `remote-host FAULT_WORKER ssh DESTINATION [KEY=VALUE...]`
//! (ssh options). It prints `pid <worker>`, the worker's pid on its host,
//! once a task hangs in it.

use std::io::Write;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let program = args.next().expect("the fault worker's path");
    let remote: procpool::Remote = match args.next().as_deref() {
        Some("launcher") => procpool::Launcher::command(args).name("stand-in").into(),
        Some("ssh") => {
            let mut ssh = procpool::Ssh::host(args.next().expect("a destination"));
            for kv in args {
                let (k, v) = kv.split_once('=').expect("KEY=VALUE");
                ssh = ssh.option(k, v);
            }
            ssh.into()
        }
        other => panic!("launcher or ssh, not {other:?}"),
    };
    let pool = procpool::Pool::builder()
        .workers(0)
        .worker_program(program)
        .remote(remote)
        .build()
        .expect("the remote pool starts");
    let worker = pool
        .apply(procpool_tests::pid, ())
        .expect("the worker answers");
    let _hung = pool
        .apply_async(procpool_tests::sleep_ms, 3_600_000)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid {worker}").unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::park();
    }
}

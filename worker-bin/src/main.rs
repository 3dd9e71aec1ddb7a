//! `procpool-worker`: a standalone worker serving the built-in tasks.

const HELP: &str = "\
procpool-worker: a procpool worker process serving built-in tasks

This program is started by a procpool Pool (Pool::builder().worker_program(..)),
which talks to it over its stdin and stdout. Started by hand it explains
itself and exits.

Usage: procpool-worker [--help | --version | --list]

Options:
  --help      print this help
  --version   print the version
  --list      print the names of the built-in tasks
";

fn main() {
    let tasks = procpool_worker::registry();
    match std::env::args().nth(1).as_deref() {
        Some("--help" | "-h") => print!("{HELP}"),
        Some("--version" | "-V") => println!("procpool-worker {}", env!("CARGO_PKG_VERSION")),
        Some("--list") => tasks.names().for_each(|n| println!("{n}")),
        Some(other) if !procpool::worker::is_worker() => {
            eprintln!("procpool-worker: unknown argument `{other}`\n\n{HELP}");
            std::process::exit(2);
        }
        _ => procpool::worker::run(&tasks),
    }
}

//! A worker that serves the fault-injecting tasks of `procpool-tests`.

fn main() {
    procpool::worker::run(&procpool_tests::registry());
}

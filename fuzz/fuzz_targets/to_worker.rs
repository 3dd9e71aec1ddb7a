//! The worker's decoding of parent messages: arbitrary bytes must give a
//! typed error or a message, never a panic, a hang or an allocation
//! beyond the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_protocol::{ToWorker, decode_to_worker};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_to_worker(data) {
        match msg {
            ToWorker::Run(run) => {
                assert!(run.items.len() <= data.len());
                let total: usize = run.items.iter().map(|i| i.len()).sum();
                assert!(total <= data.len());
            }
            ToWorker::Init { arg, .. } => assert!(arg.len() <= data.len()),
            ToWorker::Fork { .. }
            | ToWorker::Reap { .. }
            | ToWorker::Kill
            | ToWorker::Cancel { .. }
            | ToWorker::Go { .. } => {}
        }
    }
});

//! The parent's decoding of worker messages and preambles: arbitrary bytes
//! must give a typed error or a message, never a panic, a hang or an
//! allocation beyond the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_protocol::{FromWorker, Outcome, PREAMBLE_LEN, check_preamble, decode_from_worker};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = <[u8; PREAMBLE_LEN]>::try_from(data.get(..PREAMBLE_LEN).unwrap_or(&[])) {
        let _ = check_preamble(&p);
    }
    if let Ok(msg) = decode_from_worker(data) {
        match msg {
            FromWorker::Done(done) => {
                assert!(done.outcomes.len() <= data.len());
                for o in done.outcomes {
                    if let Outcome::Ok(bytes) = o {
                        assert!(bytes.len() <= data.len());
                    }
                }
            }
            FromWorker::Hello(h) => assert!(h.tasks.len() <= data.len()),
            FromWorker::InitDone(_) => {}
        }
    }
});

//! The parent's decoding of worker messages and preambles: arbitrary bytes
//! must give a typed error or a message, never a panic, a hang or an
//! allocation beyond the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_protocol::{
    FromWorker, NotForked, Outcome, PREAMBLE_LEN, check_preamble, decode_done, decode_from_worker,
    done_header,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = <[u8; PREAMBLE_LEN]>::try_from(data.get(..PREAMBLE_LEN).unwrap_or(&[])) {
        let _ = check_preamble(&p);
    }
    // The dispatcher's fast path must agree with the derived decoder, and
    // the caller's header-only view with the full one.
    let derived = decode_from_worker(data);
    match decode_done(data) {
        Ok(Some(view)) => {
            let Ok(FromWorker::Done(done)) = &derived else {
                panic!("decode_done accepted what the derived decoder refused")
            };
            assert_eq!(view.batch, done.batch);
            let fast: Vec<_> = view.outcomes().collect();
            assert_eq!(&fast, &done.outcomes);
            let header = done_header(data).expect("a validated Done has a header");
            assert_eq!(header.outcomes().collect::<Vec<_>>(), fast);
        }
        Ok(None) | Err(_) => assert!(!matches!(derived, Ok(FromWorker::Done(_)))),
    }
    if let Ok(msg) = derived {
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
            FromWorker::NotForked(NotForked::Failed(why)) => assert!(why.len() <= data.len()),
            FromWorker::InitDone(_)
            | FromWorker::Log(_)
            | FromWorker::Forked { .. }
            | FromWorker::NotForked(_)
            | FromWorker::Reaped { .. } => {}
            FromWorker::Shared { fds } => assert!(fds.len() <= data.len()),
            FromWorker::Refused { reason } => assert!(reason.len() <= data.len()),
            FromWorker::Exited { .. } => {}
        }
    }
});

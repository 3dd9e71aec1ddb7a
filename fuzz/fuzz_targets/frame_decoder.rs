//! The parent's frame reassembly and the worker's blocking frame reader,
//! fed the same arbitrary stream (the first byte picks the read sizes):
//! neither may panic, and they must agree frame for frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_protocol::FrameDecoder;
use procpool_protocol::frame::read_frame;

const MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;

    let mut dec = FrameDecoder::new(MAX);
    let mut pieces = Vec::new();
    let mut failed = false;
    'outer: for chunk in stream.chunks(step) {
        dec.extend_from_slice(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX as usize);
                    pieces.push(f);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'outer;
                }
            }
        }
    }

    let mut reader = stream;
    let mut buf = Vec::new();
    let mut blocking = Vec::new();
    let blocking_failed = loop {
        match read_frame(&mut reader, MAX, &mut buf) {
            Ok(true) => blocking.push(buf.clone()),
            Ok(false) => break false,
            Err(_) => break true,
        }
    };
    assert_eq!(pieces, blocking);
    if failed {
        assert!(blocking_failed);
    } else {
        // A trailing partial frame is an error for the blocking reader and
        // a `finish` error for the decoder.
        assert_eq!(dec.finish().is_err(), blocking_failed);
    }
});

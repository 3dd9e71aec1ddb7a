//! Review s3: DoneView::each_from against outcomes().skip(), with every
//! kind of outcome, results past the one-byte length (the slow path) and
//! hand-made non-canonical encodings.

use procpool_protocol::frame::read_frame;
use procpool_protocol::{
    Bytes, DEFAULT_MAX_FRAME, Location, Outcome, decode_done, done_header, encode_done,
    push_outcome,
};
use proptest::prelude::*;

fn outcome() -> impl Strategy<Value = (u8, Vec<u8>, String)> {
    (
        0u8..6,
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(any::<u8>(), 120..400),
        ],
        ".{0,10}",
    )
}

fn build<'a>(k: u8, bytes: &'a [u8], s: &str) -> Outcome<'a> {
    match k {
        0 | 1 => Outcome::Ok(Bytes::new(bytes)),
        2 => Outcome::Panicked {
            message: s.to_owned(),
            location: Some(Location {
                file: s.to_owned(),
                line: 3,
                column: 4,
            }),
        },
        3 => Outcome::ArgDecode(s.to_owned()),
        4 => Outcome::OutputEncode(s.to_owned()),
        _ => Outcome::Cancelled,
    }
}

proptest! {
    #[test]
    fn each_from_is_outcomes_skip(spec in proptest::collection::vec(outcome(), 0..12)) {
        let outcomes: Vec<Outcome<'_>> = spec.iter().map(|(k, b, s)| build(*k, b, s)).collect();
        let mut enc = Vec::new();
        for o in &outcomes {
            push_outcome(&mut enc, o);
        }
        let mut out = Vec::new();
        encode_done(&mut out, 7, outcomes.len() as u32, &enc, DEFAULT_MAX_FRAME).unwrap();
        let mut body = Vec::new();
        assert!(read_frame(&mut &out[..], DEFAULT_MAX_FRAME, &mut body).unwrap());
        let view = decode_done(&body).unwrap().unwrap();
        let header = done_header(&body).unwrap();
        for skip in 0..=outcomes.len() as u32 + 2 {
            let want: Vec<Outcome<'_>> = header.outcomes().skip(skip as usize).collect();
            let mut got = Vec::new();
            header.each_from(skip, |o| got.push(match o {
                Ok(b) => Outcome::Ok(Bytes::new(b)),
                Err(o) => o,
            }));
            prop_assert_eq!(&got, &want);
            let mut got2 = Vec::new();
            view.each_from(skip, |o| got2.push(match o {
                Ok(b) => Outcome::Ok(Bytes::new(b)),
                Err(o) => o,
            }));
            prop_assert_eq!(&got2, &want);
        }
    }
}

#[test]
fn non_canonical_ok_outcomes_walk_alike() {
    // `Ok` with a two-byte variant index (0x80 0x00) and a padded length,
    // as postcard accepts them.
    let mut body = vec![2u8, 7, 3];
    body.extend_from_slice(&[0x80, 0x00, 0x82, 0x00, 1, 2]);
    body.extend_from_slice(&[0x00, 0x80, 0x80, 0x00]);
    body.extend_from_slice(&[4]);
    let view = decode_done(&body).unwrap().unwrap();
    let want: Vec<_> = view.outcomes().collect();
    let mut got = Vec::new();
    view.each_from(0, |o| {
        got.push(match o {
            Ok(b) => Outcome::Ok(Bytes::new(b)),
            Err(o) => o,
        })
    });
    assert_eq!(got, want);
    assert_eq!(got.len(), 3);
}

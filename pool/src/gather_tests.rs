//! Unit tests of the caller's side of a job, coming back.
use super::decode_part;
use crate::dispatcher::Shared;
use procpool_protocol::test_support::DeepList;
use procpool_protocol::{Bytes, Outcome, encode_done, push_outcome};

/// The body of a `Done` frame, as the dispatcher forwards it.
fn done_body(outcomes: &[Outcome<'_>]) -> Vec<u8> {
    let mut items = Vec::new();
    for o in outcomes {
        push_outcome(&mut items, o);
    }
    let mut frame = Vec::new();
    encode_done(&mut frame, 1, outcomes.len() as u32, &items, u32::MAX).unwrap();
    frame.split_off(4)
}

#[test]
fn a_deeply_nested_result_decodes_on_a_default_sized_thread() {
    // 100,000 levels in 100 KB: recursive decoding needs tens of MB
    // of stack; this thread has the default 2 MiB.
    let mut deep = vec![1u8; 100_000];
    deep.push(0);
    let body = done_body(&[
        Outcome::Ok(Bytes::new(&deep)),
        Outcome::Ok(Bytes::new(&deep[..deep.len() - 1])),
        Outcome::Ok(Bytes::new(&[1, 0])),
    ]);
    let results = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let shared = Shared::new();
            let mut got = Vec::new();
            let part = super::Part {
                frame: &body,
                skip: 0,
                pid: 1,
                attached: Default::default(),
            };
            decode_part::<DeepList>(part, "deep", &shared, |r| got.push(r.map(|l| l.depth())));
            got
        })
        .unwrap()
        .join()
        .expect("the decoding thread survived");
    assert_eq!(results.len(), 3);
    assert_eq!(*results[0].as_ref().unwrap(), 100_000);
    // Cut short: that item fails to decode, the next one is fine.
    let err = results[1].as_ref().unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert_eq!(*results[2].as_ref().unwrap(), 1);
}

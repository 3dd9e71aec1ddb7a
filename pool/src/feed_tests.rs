//! Unit tests of the caller's side of a job, going in.
use super::ChunkSize;

/// The sizes of the first `n` chunks, with nothing known of what is left.
fn sizes(mut c: ChunkSize, n: usize) -> Vec<usize> {
    (0..n).map(|_| c.take((0, None))).collect()
}

/// Every chunk's size for an input of exactly `len` items.
fn chunks_of(len: usize, workers: usize) -> Vec<usize> {
    let mut c = ChunkSize::auto((len, Some(len)), workers, false);
    let mut left = len;
    let mut out = Vec::new();
    while left > 0 {
        let n = c.take((left, Some(left))).min(left);
        out.push(n);
        left -= n;
    }
    out
}

#[test]
fn known_lengths_follow_pythons_rule_with_a_cap() {
    // ceil(n / (4 * workers))
    assert_eq!(
        sizes(ChunkSize::auto((1000, Some(1000)), 2, false), 2),
        [125, 125]
    );
    assert_eq!(sizes(ChunkSize::auto((7, Some(7)), 4, false), 1), [1]);
    assert_eq!(sizes(ChunkSize::auto((0, Some(0)), 4, false), 1), [1]);
    assert_eq!(
        sizes(ChunkSize::auto((10_000_000, Some(10_000_000)), 2, false), 1),
        [4096]
    );
}

#[test]
fn known_lengths_shrink_towards_the_end_down_to_a_floor() {
    // 200 items on 2 workers: 25 first (Python's rule), then an eighth of
    // what is left, never below 2 (a sixteenth of 25).
    let c = chunks_of(200, 2);
    assert_eq!(&c[..6], [25, 22, 20, 17, 15, 13]);
    assert_eq!(c.iter().sum::<usize>(), 200);
    assert!(c.windows(2).all(|w| w[0] >= w[1]), "{c:?}");
    assert_eq!(c[c.len() - 2], 2, "{c:?}");
    // 1M items: capped at 4096 while an eighth of the rest is more, and
    // never below 256.
    let c = chunks_of(1_000_000, 2);
    assert!(c[..200].iter().all(|&n| n == 4096));
    assert!(c.iter().rev().skip(1).all(|&n| n >= 256), "{c:?}");
    assert!(c.len() < 300, "{} chunks", c.len());
    // Without the input's exact length, the first size stays.
    let mut g = ChunkSize::auto((100, Some(100)), 1, false);
    assert_eq!(g.take((3, None)), 25);
}

#[test]
fn unknown_lengths_grow_from_one_to_the_cap() {
    let s = sizes(ChunkSize::auto((0, None), 2, false), 15);
    assert_eq!(&s[..5], [1, 2, 4, 8, 16]);
    assert_eq!(*s.last().unwrap(), 4096);
    // A lower bound without an equal upper bound is not a length.
    assert_eq!(sizes(ChunkSize::auto((5, Some(10)), 2, false), 2), [1, 2]);
}

#[test]
fn a_pool_with_remote_workers_has_a_larger_cap() {
    let n = 10_000_000;
    assert_eq!(sizes(ChunkSize::auto((n, Some(n)), 2, true), 1), [16384]);
    assert_eq!(sizes(ChunkSize::auto((n, Some(n)), 2, false), 1), [4096]);
    let s = sizes(ChunkSize::auto((0, None), 2, true), 17);
    assert_eq!(&s[..3], [1, 2, 4]);
    assert_eq!(s[13..], [8192, 16384, 16384, 16384]);
    // Python's rule still decides below the cap.
    assert_eq!(
        sizes(ChunkSize::auto((1000, Some(1000)), 2, true), 1),
        [125]
    );
}

#[test]
fn a_fixed_size_stays_fixed() {
    assert_eq!(sizes(ChunkSize::Fixed(7), 3), [7, 7, 7]);
    assert_eq!(sizes(ChunkSize::Fixed(0), 1), [1]);
}

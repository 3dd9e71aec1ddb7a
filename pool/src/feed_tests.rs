//! Unit tests of the caller's side of a job, going in.
use super::ChunkSize;

fn sizes(mut c: ChunkSize, n: usize) -> Vec<usize> {
    (0..n).map(|_| c.take()).collect()
}

#[test]
fn known_lengths_follow_pythons_rule_with_a_cap() {
    // ceil(n / (4 * workers))
    assert_eq!(sizes(ChunkSize::auto((1000, Some(1000)), 2), 2), [125, 125]);
    assert_eq!(sizes(ChunkSize::auto((7, Some(7)), 4), 1), [1]);
    assert_eq!(sizes(ChunkSize::auto((0, Some(0)), 4), 1), [1]);
    assert_eq!(
        sizes(ChunkSize::auto((10_000_000, Some(10_000_000)), 2), 1),
        [4096]
    );
}

#[test]
fn unknown_lengths_grow_from_one_to_the_cap() {
    let s = sizes(ChunkSize::auto((0, None), 2), 15);
    assert_eq!(&s[..5], [1, 2, 4, 8, 16]);
    assert_eq!(*s.last().unwrap(), 4096);
    // A lower bound without an equal upper bound is not a length.
    assert_eq!(sizes(ChunkSize::auto((5, Some(10)), 2), 2), [1, 2]);
}

#[test]
fn a_fixed_size_stays_fixed() {
    assert_eq!(sizes(ChunkSize::Fixed(7), 3), [7, 7, 7]);
    assert_eq!(sizes(ChunkSize::Fixed(0), 1), [1]);
}

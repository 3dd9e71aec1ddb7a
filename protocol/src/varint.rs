//! LEB128 unsigned varints, byte-compatible with postcard's encoding of
//! `u32`, `u64`, sequence lengths and enum discriminants.

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint from the front of `bytes`: the value
/// and the bytes it took. `None` if truncated or too large for a `u64`
/// (postcard's rule: at most ten bytes, the tenth at most 1).
pub(crate) fn get(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Like [`get`], with postcard's rule for a `u32` (enum variant indices):
/// at most five bytes, the fifth at most `0x0f`.
pub(crate) fn get_u32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        if i == 4 && b > 0x0f {
            return None;
        }
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::put;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn get_u32_agrees_with_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..8)) {
            let ours = super::get_u32(&bytes).map(|(v, n)| (v, bytes.len() - n));
            let theirs = postcard::take_from_bytes::<u32>(&bytes).ok().map(|(v, rest)| (v, rest.len()));
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn non_canonical_encodings_agree(len in 1usize..12, last in any::<u8>(), width in 0usize..2) {
            // Runs of 0x80 then one byte: the shapes fuzzing found.
            let mut bytes = vec![0x80u8; len];
            bytes.push(last);
            if width == 0 {
                let ours = super::get_u32(&bytes).map(|(v, n)| (v, bytes.len() - n));
                let theirs = postcard::take_from_bytes::<u32>(&bytes).ok().map(|(v, r)| (v, r.len()));
                prop_assert_eq!(ours, theirs);
            } else {
                let ours = super::get(&bytes).map(|(v, n)| (v, bytes.len() - n));
                let theirs = postcard::take_from_bytes::<u64>(&bytes).ok().map(|(v, r)| (v, r.len()));
                prop_assert_eq!(ours, theirs);
            }
        }

        #[test]
        fn get_agrees_with_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let ours = super::get(&bytes).map(|(v, n)| (v, bytes.len() - n));
            let theirs = postcard::take_from_bytes::<u64>(&bytes).ok().map(|(v, rest)| (v, rest.len()));
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn get_reads_what_put_wrote(v in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = Vec::new();
            put(&mut buf, v);
            let n = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(super::get(&buf), Some((v, n)));
        }

        #[test]
        fn matches_postcard_u64(v in any::<u64>()) {
            let mut ours = Vec::new();
            put(&mut ours, v);
            prop_assert_eq!(ours, postcard::to_stdvec(&v).unwrap());
        }

        #[test]
        fn matches_postcard_u32(v in any::<u32>()) {
            let mut ours = Vec::new();
            put(&mut ours, u64::from(v));
            prop_assert_eq!(ours, postcard::to_stdvec(&v).unwrap());
        }
    }
}

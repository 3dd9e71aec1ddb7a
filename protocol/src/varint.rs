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

#[cfg(test)]
mod tests {
    use super::put;
    use proptest::prelude::*;

    proptest! {
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

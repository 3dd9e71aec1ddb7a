//! Decoding user values in postcard's wire format with our own serde
//! [`Deserializer`](serde::Deserializer).
//!
//! It reads postcard's bytes exactly as postcard does: the property tests
//! below decode values of many shapes, and arbitrary bytes as each of
//! them, both ways, and compare values, leftovers and errors. What differs
//! is the path, on the hottest loop of a `map` (an argument decoded in the
//! worker, a result decoded by the caller, per item): a varint of one byte
//! takes one comparison and a longer one a short loop over a plain slice,
//! where postcard pops byte by byte through its flavor, and the whole
//! decode inlines into the caller's loop instead of costing a call (about
//! a fifth less time per `u64` than postcard on this project's machines:
//! `value::tests::cost` measures both).
//!
//! Errors are postcard's [`Error`](postcard::Error), so nothing that
//! reports them changes. Encoding stays postcard's own: building a varint
//! in a register, or pushing it byte by byte, measured slower than
//! postcard's unrolled scratch array (its length comes from a predicted
//! branch, not from a chain of arithmetic the next item waits on).
//! Messages of the protocol itself go through postcard both ways.

use postcard::Error;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

type Result<T> = std::result::Result<T, Error>;

/// Reads values in postcard's format from the front of a slice.
pub(crate) struct Decoder<'de> {
    input: &'de [u8],
}

/// A varint's limits for one width (postcard's rule): at most `MAX`
/// bytes, the last one at most `LAST`.
macro_rules! varint_reader {
    ($name:ident, $t:ty) => {
        #[inline]
        fn $name(&mut self) -> Result<$t> {
            const BITS: usize = <$t>::BITS as usize;
            const MAX: usize = BITS.div_ceil(7);
            const LAST: u8 = (1u8 << (BITS % 7)) - 1;
            // One byte, the common case, takes one comparison.
            if let [b @ 0..=0x7f, rest @ ..] = self.input {
                self.input = rest;
                return Ok(<$t>::from(*b));
            }
            let bytes = self.input;
            let mut value: $t = 0;
            let mut i = 0;
            while i < MAX {
                let Some(&b) = bytes.get(i) else {
                    return Err(Error::DeserializeUnexpectedEnd);
                };
                value |= <$t>::from(b & 0x7f) << (7 * i);
                if b < 0x80 {
                    if i == MAX - 1 && b > LAST {
                        return Err(Error::DeserializeBadVarint);
                    }
                    self.input = &bytes[i + 1..];
                    return Ok(value);
                }
                i += 1;
            }
            Err(Error::DeserializeBadVarint)
        }
    };
}

impl<'de> Decoder<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Self { input }
    }

    /// The bytes not decoded yet.
    pub(crate) fn rest(&self) -> &'de [u8] {
        self.input
    }

    #[inline]
    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self
            .input
            .split_first()
            .ok_or(Error::DeserializeUnexpectedEnd)?;
        self.input = rest;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if self.input.len() < n {
            return Err(Error::DeserializeUnexpectedEnd);
        }
        let (taken, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(taken)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    varint_reader!(varint_u16, u16);
    varint_reader!(varint_u32, u32);
    varint_reader!(varint_u64, u64);
    varint_reader!(varint_u128, u128);

    #[inline]
    fn length(&mut self) -> Result<usize> {
        Ok(self.varint_u64()? as usize)
    }

    #[inline]
    fn text(&mut self) -> Result<&'de str> {
        let len = self.length()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| Error::DeserializeBadUtf8)
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(Error::DeserializeBadBool),
        }
    }

    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.byte()? as i8)
    }

    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u16()?;
        visitor.visit_i16((n >> 1) as i16 ^ -((n & 1) as i16))
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u32()?;
        visitor.visit_i32((n >> 1) as i32 ^ -((n & 1) as i32))
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u64()?;
        visitor.visit_i64((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    #[inline]
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u128()?;
        visitor.visit_i128((n >> 1) as i128 ^ -((n & 1) as i128))
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.byte()?)
    }

    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(self.varint_u16()?)
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.varint_u32()?)
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.varint_u64()?)
    }

    #[inline]
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u128(self.varint_u128()?)
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_bits(u32::from_le_bytes(self.array()?)))
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_bits(u64::from_le_bytes(self.array()?)))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        if len > 4 {
            return Err(Error::DeserializeBadChar);
        }
        let c = std::str::from_utf8(self.take(len)?)
            .ok()
            .and_then(|s| s.chars().next())
            .ok_or(Error::DeserializeBadChar)?;
        visitor.visit_char(c)
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.text()?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_str(self.text()?)
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        visitor.visit_bytes(self.take(len)?)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(Error::DeserializeBadOption),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        visitor.visit_seq(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        visitor.visit_map(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }
}

/// A sequence's, tuple's or map's elements: `len` of them, one after the
/// other (a map's keys and values alternate).
struct Elements<'a, 'de> {
    de: &'a mut Decoder<'de>,
    len: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        // As postcard: no hint beyond what the input could hold (every
        // element takes at least a byte, except `()`s, which serde's own
        // collections cap anyway), so a claimed length cannot make a
        // collection allocate beyond the frame.
        (self.len <= self.de.input.len()).then_some(self.len)
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        // postcard gives a map's claimed length as is; serde's maps cap
        // their preallocation (`size_hint::cautious`).
        Some(self.len)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = Error;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint_u32()?;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = Error;

    #[inline]
    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::Decoder;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Newtype(i32);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pair(u16, Option<i16>);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Empty,
        One(u64),
        Two(i8, char),
        Named { a: u32, b: Option<bool> },
    }

    /// Every shape serde has, each with the widest range of its values.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Shapes {
        flag: bool,
        small: (i8, u8, i16, u16),
        mid: (i32, u32, i64, u64),
        wide: (i128, u128),
        float: (f32, f64),
        text: (char, String),
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        units: ((), Unit, Newtype, Pair),
        kinds: Vec<Kind>,
        map: BTreeMap<String, Vec<u32>>,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Empty),
            any::<u64>().prop_map(Kind::One),
            (any::<i8>(), any::<char>()).prop_map(|(a, b)| Kind::Two(a, b)),
            (any::<u32>(), any::<Option<bool>>()).prop_map(|(a, b)| Kind::Named { a, b }),
        ]
    }

    fn shapes() -> impl Strategy<Value = Shapes> {
        (
            any::<bool>(),
            any::<(i8, u8, i16, u16)>(),
            any::<(i32, u32, i64, u64)>(),
            any::<(i128, u128)>(),
            // Finite floats compare equal after a round trip; NaN's bits
            // are checked on their own below.
            (-1e30f32..1e30, -1e300f64..1e300),
            (any::<char>(), ".{0,20}"),
            proptest::collection::vec(any::<u8>(), 0..40),
            (any::<i32>(), any::<u16>(), any::<Option<i16>>()),
            proptest::collection::vec(kind(), 0..5),
            proptest::collection::btree_map(
                ".{0,5}",
                proptest::collection::vec(any::<u32>(), 0..4),
                0..4,
            ),
        )
            .prop_map(
                |(flag, small, mid, wide, float, text, bytes, (n, a, b), kinds, map)| Shapes {
                    flag,
                    small,
                    mid,
                    wide,
                    float,
                    text,
                    bytes,
                    units: ((), Unit, Newtype(n), Pair(a, b)),
                    kinds,
                    map,
                },
            )
    }

    fn ours<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<(T, &'a [u8])> {
        let mut de = Decoder::new(bytes);
        let value = T::deserialize(&mut de)?;
        Ok((value, de.rest()))
    }

    /// Decodes `bytes` as a `T` both ways: the same value and leftovers,
    /// or the same error.
    fn agree<'a, T: Deserialize<'a> + PartialEq + std::fmt::Debug>(
        bytes: &'a [u8],
    ) -> Result<(), TestCaseError> {
        let theirs = postcard::take_from_bytes::<T>(bytes);
        prop_assert_eq!(ours::<T>(bytes), theirs, "{:?}", bytes);
        Ok(())
    }

    proptest! {
        #[test]
        fn postcards_encodings_decode_to_the_same_values(v in shapes(), tail in proptest::collection::vec(any::<u8>(), 0..3)) {
            let mut bytes = postcard::to_stdvec(&v).unwrap();
            bytes.extend_from_slice(&tail);
            let (back, rest) = ours::<Shapes>(&bytes).unwrap();
            prop_assert_eq!(back, v);
            prop_assert_eq!(rest, &tail[..]);
            // Every cut of a valid encoding fails as postcard's does.
            for cut in 0..bytes.len() - tail.len() {
                agree::<Shapes>(&bytes[..cut])?;
            }
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_as_postcard_does(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            agree::<Shapes>(&bytes)?;
            agree::<Vec<Kind>>(&bytes)?;
            agree::<(u16, u32, u64, u128)>(&bytes)?;
            agree::<(i16, i32, i64, i128)>(&bytes)?;
            agree::<(char, bool, Option<u8>)>(&bytes)?;
            agree::<(String, &str, &[u8])>(&bytes)?;
            agree::<BTreeMap<u8, Kind>>(&bytes)?;
        }

    }

    #[test]
    fn varints_of_every_length_decode_as_postcard_does() {
        // Runs of continuation bytes then one more: every length up to
        // past the widest varint, every last byte.
        // Continuation bytes with every payload bit set, or none (an
        // overlong zero); then nothing, or more bytes, which are left
        // over.
        for fill in [0xffu8, 0x80] {
            for after in [
                &[][..],
                &[0xff; 9],
                &[0; 9],
                &[0x80, 1, 0x7f, 0xff, 2, 0, 0x81, 3],
            ] {
                for len in 1..21 {
                    for last in 0..=255u8 {
                        let mut bytes = vec![fill; len - 1];
                        bytes.push(last);
                        bytes.extend_from_slice(after);
                        let check = || -> Result<(), TestCaseError> {
                            agree::<u16>(&bytes)?;
                            agree::<u32>(&bytes)?;
                            agree::<u64>(&bytes)?;
                            agree::<u128>(&bytes)?;
                            agree::<i16>(&bytes)?;
                            agree::<i32>(&bytes)?;
                            agree::<i64>(&bytes)
                        };
                        check().unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn every_tag_byte_decodes_as_postcard_does() {
        // Whatever a value's first byte (a bool, an option's or variant's
        // tag, a length), followed by a few shapes of the rest.
        for first in 0..=255u8 {
            for rest in [
                &[][..],
                &[0],
                &[1, 2, 3, 4, 5],
                &[0x41, 0xc3, 0xa9, 0, 0x80],
            ] {
                let mut bytes = vec![first];
                bytes.extend_from_slice(rest);
                let check = || -> Result<(), TestCaseError> {
                    agree::<bool>(&bytes)?;
                    agree::<Option<u8>>(&bytes)?;
                    agree::<Kind>(&bytes)?;
                    agree::<char>(&bytes)?;
                    agree::<String>(&bytes)?;
                    agree::<(i8, u8)>(&bytes)?;
                    agree::<(f32, Unit)>(&bytes)?;
                    agree::<BTreeMap<u8, bool>>(&bytes)
                };
                check().unwrap();
            }
        }
    }

    #[test]
    fn floats_keep_their_bits() {
        for bits in [
            f64::NAN.to_bits(),
            0x7ff8_dead_beef_0001,
            (-0.0f64).to_bits(),
            f64::INFINITY.to_bits(),
        ] {
            let bytes = postcard::to_stdvec(&f64::from_bits(bits)).unwrap();
            assert_eq!(ours::<f64>(&bytes).unwrap().0.to_bits(), bits);
        }
    }

    #[test]
    fn what_postcard_will_not_decode_we_do_not_either() {
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(untagged)]
        enum Untagged {
            A(u8),
        }
        let bytes = [1u8];
        assert_eq!(
            ours::<Untagged>(&bytes).unwrap_err(),
            postcard::Error::WontImplement
        );
        assert_eq!(
            ours::<serde::de::IgnoredAny>(&bytes).unwrap_err(),
            postcard::Error::WontImplement
        );
    }
}

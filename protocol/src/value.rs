//! Decoding user values (a task's argument in the worker, its result in the
//! parent) without letting a deeply nested value overflow the stack.
//!
//! Decoding postcard's format (through our own decoder, `codec.rs`) is
//! recursive, as serde decoding is: one set of stack frames per level of
//! nesting, with no depth limit: a `enum List { Nil, Cons(Box<List>) }`
//! 100,000 deep is only 100 KB on the wire, yet needs tens of megabytes of
//! stack to decode, and a stack overflow aborts the whole process (the
//! parent, for a result). So a payload that could be nested deeply enough
//! to matter is decoded through [`serde_stacker`], which checks the stack
//! at each level of nesting and continues on a freshly allocated segment
//! when it runs low: such a value decodes, on any thread.
//!
//! Small payloads skip that: in postcard every level of nesting that the
//! data decides (an enum variant, an `Option`, a sequence's length) takes
//! at least one byte, so a payload of at most [`SHALLOW_LEN`] bytes nests at
//! most that deep (plus its type's own fixed nesting): tens of kilobytes of
//! stack (a level of a `Box`ed list takes about 50 bytes of stack in a
//! release build, 400 in a debug build). The stack checks cost nothing on
//! a scalar but a few nanoseconds on every struct, tuple, sequence or enum
//! decoded (twice the time of a `Vec<(u64, u64)>`): small payloads, the
//! hot path of `map`, decode with no checks at all.
//!
//! Encoding goes the other way with no detour: [`push_prefixed`] writes a
//! value's postcard bytes, behind their length, straight onto the end of
//! the frame being built, with no scratch buffer and no copy.

use crate::codec::Decoder;
use serde::{Deserialize, Serialize};

/// Payloads up to this many bytes are decoded directly, without stack checks.
pub const SHALLOW_LEN: usize = 128;

/// Decodes a `T` from the front of `bytes` like
/// `postcard::take_from_bytes`, returning the bytes left over, but without
/// overflowing the stack however deeply the value nests.
#[inline]
pub fn take_value<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<(T, &'a [u8])> {
    if bytes.len() <= SHALLOW_LEN {
        let mut de = Decoder::new(bytes);
        let value = T::deserialize(&mut de)?;
        Ok((value, de.rest()))
    } else {
        take_value_stacked(bytes)
    }
}

/// [`take_value`] through `serde_stacker` whatever the payload's size.
fn take_value_stacked<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<(T, &'a [u8])> {
    let mut de = Decoder::new(bytes);
    let value = T::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    Ok((value, de.rest()))
}

/// A postcard flavor appending to a borrowed `Vec`.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Varints come here a few bytes at a time (postcard encodes one on
        // the stack, then extends): copies of a length known at compile
        // time become a move or two, where `extend_from_slice` of an
        // unknown length calls `memcpy`, which took a tenth of the CPU of
        // a `map` of `u64`s, on each side.
        macro_rules! fixed {
            ($($n:literal)*) => {
                match data.len() {
                    $($n => self.0.extend_from_slice(
                        <&[u8; $n]>::try_from(data).expect("the length matched"),
                    ),)*
                    _ => self.0.extend_from_slice(data),
                }
            };
        }
        fixed!(1 2 3 4 5 6 7 8 9 10);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `value`'s postcard encoding to `out`, preceded by its length
/// as a varint: the bytes a `&[u8]` holding that encoding would take.
/// Returns the encoding's length. On an error `out` is as it was.
///
/// One byte is set aside for the length, which fits nearly every small
/// value; a longer value is moved up by the few bytes its length needs.
#[inline(always)]
pub fn push_prefixed<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> postcard::Result<usize> {
    let at = out.len();
    out.push(0);
    let mut ser = postcard::Serializer {
        output: Append(out),
    };
    if let Err(e) = value.serialize(&mut ser) {
        out.truncate(at);
        return Err(e);
    }
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        crate::varint::put(&mut prefix, len as u64);
        out.splice(at..=at, prefix);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::DeepList;
    use serde::Serialize;

    fn deep_list(depth: usize) -> Vec<u8> {
        DeepList::bytes(depth)
    }

    /// Runs `f` on a thread with the default 2 MiB stack.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn prefixed_values_are_byte_strings_of_their_encoding() {
        use serde::ser::Error as _;
        for len in [0usize, 1, 126, 127, 128, 300, 20_000] {
            let value = vec![7u8; len];
            let mut out = vec![9u8];
            let n = push_prefixed(&mut out, &value).unwrap();
            let encoded = postcard::to_allocvec(&value).unwrap();
            assert_eq!(n, encoded.len());
            let expected = postcard::to_allocvec(&serde_bytes::Bytes::new(&encoded)).unwrap();
            assert_eq!(out[0], 9);
            assert_eq!(&out[1..], &expected[..], "length {len}");
        }
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(S::Error::custom("no"))
            }
        }
        let mut out = vec![1, 2, 3];
        assert!(push_prefixed(&mut out, &(5u64, Refuses)).is_err());
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn every_varint_length_and_a_long_copy_encode_as_postcard_does() {
        // Varints of 1 to 10 bytes, each through its own fixed-size copy,
        // and strings of every length around that (copied whole beyond).
        let mut values: Vec<u64> = (0..64).map(|s| 1u64 << s).collect();
        values.extend([0, 127, 128, u64::MAX]);
        for v in values {
            let text = "x".repeat((v % 23) as usize);
            let value = (v, text, v as i64);
            let mut out = Vec::new();
            let n = push_prefixed(&mut out, &value).unwrap();
            let plain = postcard::to_allocvec(&value).unwrap();
            assert_eq!(n, plain.len());
            assert_eq!(&out[1..], &plain[..], "{v}");
        }
    }

    #[test]
    fn a_deep_value_decodes_on_a_small_stack() {
        let depth = on_small_stack(|| {
            let bytes = deep_list(100_000);
            let (list, rest) = take_value::<DeepList>(&bytes).unwrap();
            assert!(rest.is_empty());
            list.depth()
        });
        assert_eq!(depth, 100_000);
    }

    #[test]
    fn leftovers_and_errors_are_postcards() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Pair(u64, String);
        for len in [1, SHALLOW_LEN, SHALLOW_LEN + 1, 1000] {
            let v = Pair(7, "x".repeat(len));
            let mut bytes = postcard::to_stdvec(&v).unwrap();
            bytes.extend_from_slice(&[9, 9]);
            let (back, rest) = take_value::<Pair>(&bytes).unwrap();
            assert_eq!((back, rest), (v, &[9u8, 9][..]));
            let cut = &bytes[..bytes.len() - 3];
            assert_eq!(
                take_value::<Pair>(cut).unwrap_err(),
                postcard::take_from_bytes::<Pair>(cut).unwrap_err()
            );
        }
        // A truncated deep list is an error, not a crash.
        let bytes = deep_list(100_000);
        let err = on_small_stack(move || {
            take_value::<DeepList>(&bytes[..bytes.len() - 1])
                .map(|_| ())
                .unwrap_err()
        });
        assert_eq!(err, postcard::Error::DeserializeUnexpectedEnd);
    }

    /// The cost of the stack checks on small payloads, in ns per decoded
    /// value: `cargo test --release -p procpool-protocol --lib value::tests::cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a micro-benchmark: run it in release, on purpose"]
    fn cost() {
        use std::hint::black_box;
        use std::time::Instant;

        fn ns_per_item<T>(items: &[Vec<u8>], decode: impl Fn(&[u8]) -> postcard::Result<T>) -> f64 {
            let start = Instant::now();
            for item in items {
                black_box(decode(black_box(item)).unwrap());
            }
            start.elapsed().as_nanos() as f64 / items.len() as f64
        }

        // The best of 9 rounds, the three ways taking turns within a
        // round, so drift on a shared machine hits them alike.
        fn compare<T: for<'a> Deserialize<'a>>(what: &str, items: &[Vec<u8>]) {
            let mut best = [f64::MAX; 3];
            for _ in 0..9 {
                // Whatever runs first in a round runs slower (the
                // allocator, after the last round's frees): a warm-up.
                ns_per_item(items, |b| postcard::take_from_bytes::<T>(b).map(|(v, _)| v));
                let round = [
                    ns_per_item(items, |b| postcard::take_from_bytes::<T>(b).map(|(v, _)| v)),
                    ns_per_item(items, |b| take_value_stacked::<T>(b).map(|(v, _)| v)),
                    ns_per_item(items, |b| take_value::<T>(b).map(|(v, _)| v)),
                ];
                for (b, r) in best.iter_mut().zip(round) {
                    *b = b.min(r);
                }
            }
            let [plain, stacked, ours] = best;
            let bytes = items.iter().map(Vec::len).sum::<usize>() / items.len();
            let what = format!("{what} ({bytes} B)");
            eprintln!(
                "{what:<44} postcard {plain:10.1} ns  serde_stacker {stacked:10.1} ns  \
                 take_value {ours:10.1} ns"
            );
        }

        #[derive(Deserialize)]
        #[allow(dead_code, reason = "decoded, never read")]
        struct Small {
            id: u64,
            ok: bool,
            name: String,
            scores: Vec<u32>,
        }

        let n = 1_000_000u64;
        let u64s: Vec<Vec<u8>> = (0..n)
            .map(|i| postcard::to_stdvec(&(i * i)).unwrap())
            .collect();
        compare::<u64>("1M u64", &u64s);
        let small: Vec<Vec<u8>> = (0..n)
            .map(|i| postcard::to_stdvec(&(i, i % 2 == 0, "name", vec![1u32, 2, 3])).unwrap())
            .collect();
        compare::<Small>("1M small structs", &small);
        let big: Vec<Vec<u8>> = (0..n / 10)
            .map(|i| postcard::to_stdvec(&(i, true, "n".repeat(40), vec![7u32; 20])).unwrap())
            .collect();
        compare::<Small>("100k structs", &big);
        let bigger: Vec<Vec<u8>> = (0..n / 10)
            .map(|i| postcard::to_stdvec(&(i, true, "n".repeat(40), vec![7u32; 100])).unwrap())
            .collect();
        compare::<Small>("100k larger structs", &bigger);
        let one = vec![postcard::to_stdvec(&(0..n).collect::<Vec<u64>>()).unwrap()];
        compare::<Vec<u64>>("one Vec<u64> of 1M, per Vec", &one);
        let pairs = vec![postcard::to_stdvec(&(0..n).map(|i| (i, i)).collect::<Vec<_>>()).unwrap()];
        compare::<Vec<(u64, u64)>>("one Vec<(u64, u64)> of 1M, per Vec", &pairs);
    }
}

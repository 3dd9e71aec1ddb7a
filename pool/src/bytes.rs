//! [`Bytes`]: a byte payload that serde moves as one block.
//!
//! serde sees a `Vec<u8>` as a sequence like any other: encoding visits
//! its elements one `u8` at a time, and decoding pushes them back one at a
//! time, with a check per element. `Bytes` goes through serde's bytes
//! methods instead (`serialize_bytes`, `deserialize_byte_buf`), which
//! postcard implements as one length and one copy. In postcard the two
//! encode the same (a varint length, then the raw bytes).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::payload;
use crate::sys::Mapping;

/// A byte payload that crosses the pipe as one block: the fast path for a
/// task's binary arguments and results.
///
/// A `Vec<u8>` argument is encoded and decoded one byte at a time, because
/// serde walks it as a sequence of `u8`; a `Bytes` is copied whole, as
/// one length and one `memcpy`. Use it for any payload larger than a few
/// hundred bytes: file contents, images, serialized blobs.
///
/// It dereferences to `[u8]` (and mutably), and converts from `Vec<u8>`
/// (without a copy) and `&[u8]`, and back with
/// [`into_vec`](Bytes::into_vec).
///
/// Between the pool and a local worker, a `Bytes` of 1 MiB or more
/// travels through shared memory instead (a sealed memfd the receiver
/// maps; see the crate docs, "Large payloads"): received, it holds that
/// mapping, read-only, and copies it out on the first change.
///
/// Anywhere else, in postcard a `Bytes` and a `Vec<u8>` of the same
/// contents are the same bytes (a varint length, then the raw bytes), so
/// bytes encoded as one decode as the other. The pool still checks
/// type names at submit: call a task with the types it was registered
/// with (a [`Task`](crate::Task) handle declaring `Bytes` for a task
/// served as taking `Vec<u8>` is refused, with an error that
/// [`is_unknown_task`](crate::Error::is_unknown_task)).
///
/// ```rust,standalone_crate
/// use procpool::Bytes;
///
/// fn reverse(mut data: Bytes) -> Bytes {
///     data.reverse(); // through `DerefMut` to `[u8]`
///     data
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     let tasks = procpool::Registry::new().task(reverse);
///     procpool::serve_if_worker(&tasks);
///
///     let pool = procpool::Pool::builder().workers(1).build()?;
///     let back = pool.apply(reverse, Bytes::from(&b"abc"[..]))?;
///     assert_eq!(&back[..], b"cba");
///     let big = pool.apply(reverse, Bytes::from(vec![1u8; 1 << 20]))?;
///     assert_eq!(big.into_vec().len(), 1 << 20);
///     Ok(())
/// }
/// ```
#[derive(Clone, Default)]
pub struct Bytes {
    inner: Repr,
}

/// Where the bytes are: in a vector, or in a sealed memfd that a large
/// payload came in (read-only; a change copies them out first).
#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    Mapped(Arc<Mapping>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Bytes {}

impl std::hash::Hash for Bytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self[..].hash(state);
    }
}

impl Bytes {
    /// An empty payload; allocates nothing.
    ///
    /// ```
    /// let b = procpool::Bytes::new();
    /// assert!(b.is_empty());
    /// ```
    pub fn new() -> Bytes {
        Bytes::default()
    }

    /// The bytes as a `Vec<u8>`: without a copy, but for a payload that
    /// came in shared memory (copied out of its mapping).
    ///
    /// ```
    /// let b = procpool::Bytes::from(vec![1, 2]);
    /// assert_eq!(b.into_vec(), [1, 2]);
    /// ```
    pub fn into_vec(self) -> Vec<u8> {
        match self.inner {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.bytes().to_vec(),
        }
    }

    fn mapped(map: Mapping) -> Bytes {
        Bytes {
            inner: Repr::Mapped(Arc::new(map)),
        }
    }
}

/// Takes the vector as it is, without a copy.
///
/// ```
/// let b = procpool::Bytes::from(vec![7u8; 3]);
/// assert_eq!(&b[..], [7, 7, 7]);
/// ```
impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes {
            inner: Repr::Owned(v),
        }
    }
}

/// Copies the slice.
///
/// ```
/// let b = procpool::Bytes::from(&b"hi"[..]);
/// assert_eq!(b.len(), 2);
/// ```
impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Bytes {
        Bytes::from(bytes.to_vec())
    }
}

/// The bytes, as a slice: every `[u8]` method works on a `Bytes`.
///
/// ```
/// let b = procpool::Bytes::from(&b"abc"[..]);
/// assert!(b.starts_with(b"ab"));
/// ```
impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.bytes(),
        }
    }
}

/// The bytes, as a mutable slice (the length stays; for a new length,
/// [`into_vec`](Bytes::into_vec), change the vector, and convert back).
///
/// ```
/// let mut b = procpool::Bytes::from(vec![0u8; 2]);
/// b[1] = 9;
/// assert_eq!(&b[..], [0, 9]);
/// ```
impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        if let Repr::Mapped(m) = &self.inner {
            self.inner = Repr::Owned(m.bytes().to_vec());
        }
        match &mut self.inner {
            Repr::Owned(v) => v,
            Repr::Mapped(_) => unreachable!("copied out above"),
        }
    }
}

/// The bytes, as a slice.
///
/// ```
/// fn len(data: impl AsRef<[u8]>) -> usize {
///     data.as_ref().len()
/// }
/// assert_eq!(len(procpool::Bytes::from(vec![1, 2, 3])), 3);
/// ```
impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A byte string literal, escaped as `b"..."` would be: `Bytes(b"a\x00")`.
///
/// ```
/// let b = procpool::Bytes::from(&b"a\0"[..]);
/// assert_eq!(format!("{b:?}"), r#"Bytes(b"a\x00")"#);
/// ```
impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bytes(b\"")?;
        for &b in self.iter() {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        f.write_str("\")")
    }
}

/// Encodes the bytes as one block (`serialize_bytes`). Encoded by the pool
/// for a local worker, or by such a worker for the pool, a payload of
/// 1 MiB or more goes through shared memory instead, and the block is a
/// small marker naming it (see the crate docs, "Large payloads").
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match payload::share(self) {
            Some(marker) => serializer.serialize_bytes(&marker),
            None => serializer.serialize_bytes(self),
        }
    }
}

/// Decodes one block of bytes (`deserialize_byte_buf`); also accepts a
/// sequence of `u8`, for formats that write bytes as a list.
impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte array")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        match payload::resolve(v) {
            Some(mapped) => mapped.map(Bytes::mapped).map_err(E::custom),
            None => Ok(Bytes::from(v)),
        }
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        self.visit_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        match payload::resolve(&v) {
            Some(mapped) => mapped.map(Bytes::mapped).map_err(E::custom),
            None => Ok(Bytes::from(v)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        // The hint comes from the input: cap what it may reserve up front.
        let mut inner = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            inner.push(b);
        }
        Ok(Bytes::from(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn round_trip_through_postcard() {
        let b = Bytes::from(pattern(1000));
        let wire = postcard::to_stdvec(&b).unwrap();
        assert_eq!(postcard::from_bytes::<Bytes>(&wire).unwrap(), b);
    }

    #[test]
    fn same_wire_layout_as_vec_u8() {
        for len in [0, 1, 127, 128, 300, 70_000] {
            let v = pattern(len);
            let as_vec = postcard::to_stdvec(&v).unwrap();
            let as_bytes = postcard::to_stdvec(&Bytes::from(v.clone())).unwrap();
            assert_eq!(as_vec, as_bytes, "len {len}");
        }
    }

    #[test]
    fn vec_u8_decodes_as_bytes_and_back() {
        let v = pattern(5000);
        let wire = postcard::to_stdvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<Bytes>(&wire).unwrap().into_vec(), v);
        let wire = postcard::to_stdvec(&Bytes::from(v.clone())).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<u8>>(&wire).unwrap(), v);
    }

    #[test]
    fn empty() {
        let wire = postcard::to_stdvec(&Bytes::new()).unwrap();
        assert_eq!(wire, [0]);
        assert_eq!(wire, postcard::to_stdvec(&Vec::<u8>::new()).unwrap());
        let back: Bytes = postcard::from_bytes(&wire).unwrap();
        assert!(back.is_empty());
        assert_eq!(back, Bytes::default());
    }

    #[test]
    fn large() {
        let v = pattern(1 << 20);
        let wire = postcard::to_stdvec(&Bytes::from(v.clone())).unwrap();
        // Varint of 2^20 is 3 bytes.
        assert_eq!(wire.len(), (1 << 20) + 3);
        let back: Bytes = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back.len(), 1 << 20);
        assert_eq!(back.into_vec(), v);
        assert_eq!(postcard::from_bytes::<Vec<u8>>(&wire).unwrap(), v);
    }

    #[test]
    fn inside_a_tuple_and_truncated() {
        let wire = postcard::to_stdvec(&(7u32, Bytes::from(&b"xyz"[..]), 9u8)).unwrap();
        let (a, b, c): (u32, Bytes, u8) = postcard::from_bytes(&wire).unwrap();
        assert_eq!((a, &b[..], c), (7, &b"xyz"[..], 9));
        let payload = postcard::to_stdvec(&Bytes::from(pattern(10))).unwrap();
        assert!(postcard::from_bytes::<Bytes>(&payload[..5]).is_err());
    }

    #[test]
    fn sequence_of_u8_is_accepted() {
        use serde::de::value::{Error, SeqDeserializer};
        let seq = SeqDeserializer::<_, Error>::new([1u8, 2, 3].into_iter());
        let b = BytesVisitor.visit_seq(seq).unwrap();
        assert_eq!(&b[..], [1, 2, 3]);
    }

    #[test]
    fn conversions_and_debug() {
        let mut b = Bytes::from(&b"ab"[..]);
        b[0] = b'x';
        assert_eq!(b.as_ref(), b"xb");
        assert_eq!(format!("{b:?}"), "Bytes(b\"xb\")");
        assert_eq!(
            format!("{:?}", Bytes::from(vec![0, b'"'])),
            r#"Bytes(b"\x00\"")"#
        );
        assert_eq!(b.clone().into_vec(), b"xb");
    }
}

//! Review: take_value (our codec, both the direct and the serde_stacker
//! path) against postcard::take_from_bytes on shapes the module's own
//! tests do not cover.

use procpool_protocol::value::take_value;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "t")]
enum Internal {
    A { x: u8 },
}

#[derive(Debug, PartialEq, Deserialize)]
struct Flat {
    a: u8,
    #[serde(flatten)]
    rest: HashMap<String, u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Big {
    A,
    B(u8),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Skippy {
    a: u8,
    #[serde(skip)]
    b: u8,
    #[serde(default)]
    c: Option<u16>,
}

fn agree<'a, T: Deserialize<'a> + PartialEq + std::fmt::Debug>(
    bytes: &'a [u8],
) -> Result<(), TestCaseError> {
    let theirs = postcard::take_from_bytes::<T>(bytes);
    let ours = take_value::<T>(bytes);
    prop_assert_eq!(ours, theirs, "{} {:?}", std::any::type_name::<T>(), bytes);
    Ok(())
}

fn all(bytes: &[u8]) -> Result<(), TestCaseError> {
    agree::<HashMap<String, u8>>(bytes)?;
    agree::<Cow<'_, str>>(bytes)?;
    agree::<Box<str>>(bytes)?;
    agree::<Box<[u8]>>(bytes)?;
    agree::<serde_bytes::ByteBuf>(bytes)?;
    agree::<&serde_bytes::Bytes>(bytes)?;
    agree::<Vec<Option<()>>>(bytes)?;
    agree::<[u16; 3]>(bytes)?;
    agree::<Result<u8, String>>(bytes)?;
    agree::<Vec<Vec<u8>>>(bytes)?;
    agree::<std::time::Duration>(bytes)?;
    agree::<std::net::IpAddr>(bytes)?;
    agree::<std::net::SocketAddr>(bytes)?;
    agree::<BTreeSet<i64>>(bytes)?;
    agree::<(i128, u128, char)>(bytes)?;
    agree::<Big>(bytes)?;
    agree::<Skippy>(bytes)?;
    agree::<Internal>(bytes)?;
    agree::<Flat>(bytes)?;
    agree::<std::marker::PhantomData<u8>>(bytes)?;
    agree::<Option<Option<Option<bool>>>>(bytes)?;
    agree::<std::num::NonZeroU32>(bytes)?;
    agree::<std::ops::Range<u32>>(bytes)?;
    agree::<std::path::PathBuf>(bytes)?;
    agree::<std::ffi::CString>(bytes)?;
    agree::<std::time::SystemTime>(bytes)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn short_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        all(&bytes)?;
    }

    /// Past SHALLOW_LEN: the serde_stacker path.
    #[test]
    fn long_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 129..400)) {
        all(&bytes)?;
    }

    /// Biased: small lengths and tags, so values decode often.
    #[test]
    fn biased_bytes(bytes in proptest::collection::vec(prop_oneof![0u8..4, any::<u8>(), Just(0x80u8), Just(0xff)], 0..300)) {
        all(&bytes)?;
    }
}

#[test]
fn stacked_path_leftovers_and_nesting() {
    // A valid long value with tails of every length, through both paths.
    for n in [100usize, 127, 128, 129, 200] {
        let v: Vec<u8> = (0..n as u32).map(|i| i as u8).collect();
        let mut bytes = postcard::to_stdvec(&v).unwrap();
        for tail in 0..4 {
            bytes.push(tail);
            agree::<Vec<u8>>(&bytes).unwrap();
            agree::<serde_bytes::ByteBuf>(&bytes).unwrap();
            agree::<&str>(&bytes).unwrap();
        }
    }
    // A nested Option chain past 128 bytes.
    let mut bytes = vec![1u8; 300];
    bytes.push(0);
    type O = Option<Box<Nest>>;
    #[derive(Debug, PartialEq, Deserialize)]
    struct Nest(O);
    agree::<Nest>(&bytes).unwrap();
}

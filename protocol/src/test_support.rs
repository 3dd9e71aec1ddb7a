//! Test support shared by the workspace's tests (the `test-support`
//! feature; not part of the protocol).

use serde::{Deserialize, Serialize, Serializer};

/// A list nested as deep as its data says: `Cons(Cons(.. Nil))`, one byte
/// per level on the wire (variant 1, then variant 0 at the end). It is
/// decoded by the derived, recursive decoder (stack frames per level), but
/// built, encoded and dropped without recursion, so decoding is the only
/// step whose stack depth grows with it.
#[derive(Debug, Deserialize)]
pub enum DeepList {
    /// The end.
    Nil,
    /// One more level.
    Cons(Box<DeepList>),
}

impl DeepList {
    /// A list `depth` levels deep.
    pub fn of_depth(depth: u64) -> Self {
        let mut list = DeepList::Nil;
        for _ in 0..depth {
            list = DeepList::Cons(Box::new(list));
        }
        list
    }

    /// How many levels deep it is.
    pub fn depth(&self) -> u64 {
        let (mut depth, mut at) = (0, self);
        while let DeepList::Cons(next) = at {
            depth += 1;
            at = next;
        }
        depth
    }

    /// The encoding of a list `depth` levels deep, without building it.
    pub fn bytes(depth: usize) -> Vec<u8> {
        let mut bytes = vec![1u8; depth];
        bytes.push(0);
        bytes
    }
}

impl Serialize for DeepList {
    /// The bytes the derived encoder would write, without its recursion:
    /// postcard writes a `u8` as one byte, and a tuple with no length.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let depth = self.depth() as usize;
        let mut t = s.serialize_tuple(depth + 1)?;
        for _ in 0..depth {
            t.serialize_element(&1u8)?;
        }
        t.serialize_element(&0u8)?;
        t.end()
    }
}

impl Drop for DeepList {
    fn drop(&mut self) {
        // One level at a time: the derived drop would recurse.
        let mut next = match self {
            DeepList::Cons(b) => std::mem::replace(&mut **b, DeepList::Nil),
            DeepList::Nil => return,
        };
        while let DeepList::Cons(b) = &mut next {
            next = std::mem::replace(&mut **b, DeepList::Nil);
        }
    }
}

use thiserror::Error;

/// A message body that could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The body is not a valid encoding of the expected message type.
    #[error("malformed {what} message")]
    Malformed {
        /// Which message type was expected.
        what: &'static str,
        /// Postcard's reason.
        #[source]
        source: postcard::Error,
    },
    /// The message decoded but bytes were left over after it.
    #[error("{extra} trailing bytes after a {what} message")]
    Trailing {
        /// Which message type was decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// The first bytes of a stream were not a procpool preamble we can speak.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PreambleError {
    /// The magic bytes are wrong: the peer is not a procpool program.
    #[error("not a procpool peer: its stream began with {}", show_bytes(.head))]
    NotProcpool {
        /// The bytes the peer sent instead of the magic.
        head: Vec<u8>,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks version {found}, we speak {ours}")]
    Version {
        /// The peer's version.
        found: u32,
        /// Ours.
        ours: u32,
    },
}

/// Renders bytes for an error message: printable ASCII as text, the rest
/// escaped.
fn show_bytes(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

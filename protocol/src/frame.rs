//! Framing: a little-endian `u32` length, then that many bytes of body.
//!
//! The length is checked against a maximum **before** any buffer grows for
//! it, and even an accepted length only grows buffers as bytes actually
//! arrive, so a peer that claims a large frame and then stalls costs no more
//! memory than it sent.
//!
//! Two readers share these rules: [`read_frame`] for a blocking stream (the
//! worker side) and [`FrameDecoder`] for bytes fed in whatever pieces a
//! non-blocking read returns (the parent's event loop).

use std::io::{self, Read, Write};

use thiserror::Error;

/// Bytes of a frame's length prefix.
pub const HEADER_LEN: usize = 4;

/// The default largest frame body either side accepts: 64 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;

/// Smallest read the [`FrameDecoder`] asks of the stream at a time.
const READ_CHUNK: usize = 64 << 10;

/// A frame that could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix exceeds the maximum; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the frame claimed.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame (header included) should have had.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The underlying stream failed.
    #[error("i/o error on the protocol stream")]
    Io(#[from] io::Error),
}

/// Frames up to this size are read straight into a buffer with room.
const SMALL_FRAME: usize = 64 << 10;

/// Reads one frame body into `buf` (replacing its contents).
///
/// Returns `Ok(false)` on a clean end of stream before the first byte of a
/// frame, `Ok(true)` when `buf` holds a whole body.
pub fn read_frame<R: Read>(r: &mut R, max: u32, buf: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(false);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let len = u32::from_le_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    buf.clear();
    let got = if len as usize <= buf.capacity().min(SMALL_FRAME) {
        // A small frame, and room already there (the common case: a
        // buffer reused frame after frame): read straight into it. (Not a
        // large one: zeroing the room first would cost a pass over it.)
        buf.resize(len as usize, 0);
        let got = read_full(r, buf)?;
        buf.truncate(got);
        got
    } else {
        // `take` + `read_to_end` grows the buffer with the bytes that
        // really arrive, never by the claimed length up front.
        r.take(u64::from(len)).read_to_end(buf)?
    };
    if got < len as usize {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN + len as usize,
            got: HEADER_LEN + got,
        });
    }
    Ok(true)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes one frame (header and body) to `w`.
pub fn write_frame<W: Write>(w: &mut W, body: &[u8], max: u32) -> Result<(), FrameError> {
    let len = checked_len(body.len(), max)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)?;
    Ok(())
}

/// Begins a frame at the end of `out`: reserves the length prefix and
/// returns where it stands. Encode the body by appending to `out`, then call
/// [`finish_frame`].
pub fn start_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    at
}

/// Completes the frame begun at `at` by [`start_frame`]: writes its length.
/// A body over `max` is removed again and reported.
pub fn finish_frame(out: &mut Vec<u8>, at: usize, max: u32) -> Result<(), FrameError> {
    let body = out.len() - at - HEADER_LEN;
    match checked_len(body, max) {
        Ok(len) => {
            out[at..at + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(e)
        }
    }
}

fn checked_len(len: usize, max: u32) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(l) if l <= max => Ok(l),
        _ => Err(FrameError::TooLarge {
            len: len as u64,
            max,
        }),
    }
}

/// Reassembles frames from bytes that arrive in arbitrary pieces.
///
/// Feed it with [`read_from`](Self::read_from) (or
/// [`extend_from_slice`](Self::extend_from_slice)), then take whole frames
/// with [`next_frame`](Self::next_frame) until it returns `None`.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Initialised storage; `buf[start..end]` is unconsumed data.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: u32,
    /// The last `read_from` returned less than it had room for.
    short: bool,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
            short: false,
        }
    }

    /// Whether the last [`read_from`](Self::read_from) returned fewer bytes
    /// than there was room for: the stream had nothing more at that moment,
    /// so another read would most likely find nothing.
    pub fn last_read_short(&self) -> bool {
        self.short
    }

    /// Bytes received but not yet returned as a frame or raw bytes.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Performs one `read` from `r` into the decoder's buffer and returns
    /// what `read` returned (`Ok(0)` is end of stream).
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.make_room();
        let room = self.buf.len() - self.end;
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        self.short = n < room;
        Ok(n)
    }

    /// Appends bytes as if they had been read.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            self.make_room();
            let n = rest.len().min(self.buf.len() - self.end);
            self.buf[self.end..self.end + n].copy_from_slice(&rest[..n]);
            self.end += n;
            rest = &rest[n..];
        }
    }

    /// Takes `N` raw bytes (the preamble) if that many have arrived.
    pub fn take_raw<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.buffered() < N {
            return None;
        }
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.start..self.start + N]);
        self.start += N;
        Some(out)
    }

    /// The bytes buffered so far, for error messages.
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The next whole frame body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.pending_len()? else {
            return Ok(None);
        };
        if self.buffered() < HEADER_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + HEADER_LEN;
        let body = self.buf[body_start..body_start + len].to_vec();
        self.start = body_start + len;
        Ok(Some(body))
    }

    /// After the stream ended: an error if a partial frame was left behind.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            got => Err(FrameError::Truncated {
                expected: self
                    .pending_len()
                    .ok()
                    .flatten()
                    .map_or(HEADER_LEN, |len| HEADER_LEN + len),
                got,
            }),
        }
    }

    /// The body length of the frame at the front, once its header is here.
    fn pending_len(&self) -> Result<Option<usize>, FrameError> {
        if self.buffered() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        let len = u32::from_le_bytes(header);
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max,
            });
        }
        Ok(Some(len as usize))
    }

    /// Ensures at least [`READ_CHUNK`] free bytes after `end`. Unconsumed
    /// bytes move to the front only when the tail is short (so a large frame
    /// being assembled is not copied on every read), and the buffer grows at
    /// most by doubling towards the frame in progress, so its size follows
    /// the bytes that really arrive, not the length a peer claims.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= READ_CHUNK {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end >= READ_CHUNK {
                return;
            }
        }
        let frame_end = match self.pending_len() {
            Ok(Some(len)) => HEADER_LEN + len,
            _ => 0,
        };
        let new_len = (self.end + READ_CHUNK).max(frame_end.min(self.buf.len() * 2));
        self.buf.resize(new_len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            write_frame(&mut out, b, u32::MAX).unwrap();
        }
        out
    }

    #[test]
    fn oversize_header_is_rejected_before_allocation() {
        let mut stream: &[u8] = &u32::MAX.to_le_bytes();
        let mut buf = Vec::new();
        let err = read_frame(&mut stream, 1024, &mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u64::from(u32::MAX))
        );
        assert_eq!(buf.capacity(), 0);

        let mut dec = FrameDecoder::new(1024);
        dec.extend_from_slice(&2000u32.to_le_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 2000, .. })
        ));
    }

    #[test]
    fn claimed_length_does_not_preallocate() {
        // A 60 MiB claim followed by 10 bytes grows the buffer by what came.
        let mut stream = (60u32 << 20).to_le_bytes().to_vec();
        stream.extend_from_slice(&[7; 10]);
        let mut buf = Vec::new();
        let err = read_frame(&mut stream.as_slice(), DEFAULT_MAX_FRAME, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { got: 14, .. }));
        assert!(buf.capacity() < 1 << 20, "capacity {}", buf.capacity());

        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.extend_from_slice(&stream);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(dec.buf.len() < 1 << 20, "decoder grew to {}", dec.buf.len());
    }

    #[test]
    fn clean_eof_and_truncated_header() {
        let mut buf = Vec::new();
        assert!(!read_frame(&mut &[][..], 10, &mut buf).unwrap());
        let err = read_frame(&mut &[1u8, 0][..], 10, &mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                expected: 4,
                got: 2
            }
        ));
    }

    #[test]
    fn finish_frame_rejects_and_rolls_back_oversize() {
        let mut out = vec![9u8];
        let at = start_frame(&mut out);
        out.extend_from_slice(&[1; 20]);
        assert!(finish_frame(&mut out, at, 10).is_err());
        assert_eq!(out, vec![9]);
        let at = start_frame(&mut out);
        out.extend_from_slice(&[1; 3]);
        finish_frame(&mut out, at, 10).unwrap();
        assert_eq!(out, vec![9, 3, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn decoder_reports_truncation_at_end() {
        let mut dec = FrameDecoder::new(100);
        dec.extend_from_slice(&framed(&[vec![1, 2, 3]])[..5]);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated {
                expected: 7,
                got: 5
            })
        ));
    }

    proptest! {
        #[test]
        fn round_trip_through_split_reads(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(1usize..97, 1..50),
        ) {
            let stream = framed(&bodies);
            let mut dec = FrameDecoder::new(1000);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - pos);
                dec.extend_from_slice(&stream[pos..pos + n]);
                pos += n;
                i += 1;
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            dec.finish().unwrap();
            prop_assert_eq!(&got, &bodies);

            // The blocking reader agrees, through a reader that returns
            // short reads.
            let mut reader = Chunky { data: &stream, cuts: &cuts, i: 0 };
            let mut buf = Vec::new();
            let mut blocking = Vec::new();
            while read_frame(&mut reader, 1000, &mut buf).unwrap() {
                blocking.push(buf.clone());
            }
            prop_assert_eq!(&blocking, &bodies);
        }

        #[test]
        fn truncation_anywhere_is_detected(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let stream = framed(&bodies);
            let cut = cut.index(stream.len());
            let mut dec = FrameDecoder::new(1000);
            dec.extend_from_slice(&stream[..cut]);
            let mut whole = 0;
            while dec.next_frame().unwrap().is_some() {
                whole += 1;
            }
            // Every frame that ends before the cut is whole; if the cut is
            // inside a frame, finish() says so.
            let mut boundary = 0;
            let mut complete = 0;
            for b in &bodies {
                if boundary + 4 + b.len() <= cut { complete += 1; boundary += 4 + b.len(); } else { break; }
            }
            prop_assert_eq!(whole, complete);
            prop_assert_eq!(dec.finish().is_ok(), boundary == cut);

            let mut buf = Vec::new();
            let mut r = &stream[..cut];
            let mut n = 0;
            let end = loop {
                match read_frame(&mut r, 1000, &mut buf) {
                    Ok(true) => n += 1,
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            prop_assert_eq!(n, complete);
            prop_assert_eq!(end.is_ok(), boundary == cut);
        }

        #[test]
        fn oversize_is_rejected_at_any_limit(len in 1u32.., max in 0u32..1_000_000) {
            prop_assume!(len > max);
            let mut dec = FrameDecoder::new(max);
            dec.extend_from_slice(&len.to_le_bytes());
            let rejected = matches!(dec.next_frame(), Err(FrameError::TooLarge { .. }));
            prop_assert!(rejected);
        }
    }

    struct Chunky<'a> {
        data: &'a [u8],
        cuts: &'a [usize],
        i: usize,
    }

    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.cuts[self.i % self.cuts.len()]
                .min(buf.len())
                .min(self.data.len());
            self.i += 1;
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }
}

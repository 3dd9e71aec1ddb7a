//! The pool's stream as the relay reads it: frames passed on to the
//! worker, `Run` frames counted (and held until their go-ahead), and the
//! relay's own frames (`Kill`, `Cancel`, `Go`) taken out, wherever the
//! reads happen to cut the stream.

use procpool_protocol::{
    CANCEL_TAG, GO_TAG, KILL_TAG, PREAMBLE_LEN, RUN_TAG, ToWorker, decode_to_worker,
};

/// Bytes of a frame's body the relay looks at before passing it on: enough
/// for a `Run` frame's header (tag, batch, task, eager, item count).
const HEAD: usize = 32;

/// Frames of the pool's stream, split so the relay's own frames (`Kill`,
/// `Cancel`) are taken out and `Run` frames are counted.
#[derive(Debug, Default)]
pub(super) struct Split {
    /// Preamble bytes passed on so far.
    preamble: usize,
    /// Bytes of the current frame still to pass on.
    frame_left: usize,
    /// Bytes read and not yet dropped (see [`drain`](Self::drain)).
    pub(super) pending: Vec<u8>,
    /// Bytes of `pending` the last [`feed`](Self::feed) classified.
    consumed: usize,
    /// The frame being passed on is a `Run` frame.
    in_run: bool,
}

/// What the pool's stream held.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    /// Bytes for the worker (a range of `Split::pending`).
    Pass(usize, usize),
    /// Bytes of the `Run` frame last announced, held until its `Go`.
    PassRun(usize, usize),
    /// A `Run` frame starts (its bytes follow as `Pass`): its batch id and
    /// item count.
    Run { batch: u64, items: u64 },
    /// A `Kill` frame.
    Kill,
    /// A `Cancel` frame.
    Cancel(u64),
    /// A `Go` frame.
    Go(u64),
}

impl Split {
    /// Splits `data` (appended to what is pending) into pieces; `Pass`
    /// ranges index `self.pending` until [`drain`](Self::drain).
    pub(super) fn feed(&mut self, data: &[u8]) -> Vec<Piece> {
        self.pending.extend_from_slice(data);
        let buf = &self.pending;
        let mut at = 0;
        let mut pieces = Vec::new();
        let pass = |from: usize, to: usize, run: bool, pieces: &mut Vec<Piece>| {
            if to > from {
                match pieces.last_mut() {
                    Some(Piece::Pass(_, end)) if *end == from && !run => *end = to,
                    Some(Piece::PassRun(_, end)) if *end == from && run => *end = to,
                    _ if run => pieces.push(Piece::PassRun(from, to)),
                    _ => pieces.push(Piece::Pass(from, to)),
                }
            }
        };
        loop {
            if self.preamble < PREAMBLE_LEN {
                let n = (PREAMBLE_LEN - self.preamble).min(buf.len() - at);
                pass(at, at + n, false, &mut pieces);
                self.preamble += n;
                at += n;
                if self.preamble < PREAMBLE_LEN {
                    break;
                }
                continue;
            }
            if self.frame_left > 0 {
                let n = self.frame_left.min(buf.len() - at);
                pass(at, at + n, self.in_run, &mut pieces);
                self.frame_left -= n;
                at += n;
                if self.frame_left > 0 {
                    break;
                }
                continue;
            }
            let rest = &buf[at..];
            if rest.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            // The head of the body, or all of a short one.
            if rest.len() < 4 + len.min(HEAD) {
                break;
            }
            let head = &rest[4..4 + len.min(HEAD)];
            match head.first() {
                Some(&KILL_TAG) if len == 1 => {
                    pieces.push(Piece::Kill);
                    at += 5;
                    continue;
                }
                Some(&(CANCEL_TAG | GO_TAG)) if len <= HEAD => match decode_to_worker(head) {
                    Ok(ToWorker::Cancel { run }) => {
                        pieces.push(Piece::Cancel(run));
                        at += 4 + len;
                        continue;
                    }
                    Ok(ToWorker::Go { run }) => {
                        pieces.push(Piece::Go(run));
                        at += 4 + len;
                        continue;
                    }
                    _ => {}
                },
                _ => {}
            }
            // Tag, batch, task, eager, item count: postcard varints and a
            // byte (a sequence's length is a varint).
            self.in_run = false;
            if head.first() == Some(&RUN_TAG)
                && let Ok(((_, batch, _, _, items), _)) =
                    postcard::take_from_bytes::<(u32, u64, u32, bool, u64)>(head)
            {
                pieces.push(Piece::Run { batch, items });
                self.in_run = true;
            }
            self.frame_left = 4 + len;
        }
        self.consumed = at;
        pieces
    }

    /// Drops the bytes [`feed`](Self::feed) classified.
    pub(super) fn drain(&mut self) {
        let n = std::mem::take(&mut self.consumed);
        self.pending.drain(..n);
    }
}

#[cfg(test)]
mod tests {
    use procpool_protocol::preamble;

    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    /// Feeds `stream` in pieces of `step` bytes; returns what passed and
    /// how many kills were seen.
    fn split_in_steps(stream: &[u8], step: usize) -> (Vec<u8>, usize) {
        let mut s = Split::default();
        let (mut passed, mut kills) = (Vec::new(), 0);
        for chunk in stream.chunks(step) {
            for p in s.feed(chunk) {
                match p {
                    Piece::Pass(a, b) => passed.extend_from_slice(&s.pending[a..b]),
                    Piece::PassRun(a, b) => passed.extend_from_slice(&s.pending[a..b]),
                    Piece::Kill => kills += 1,
                    Piece::Cancel(_) | Piece::Go(_) | Piece::Run { .. } => {}
                }
            }
            s.drain();
        }
        (passed, kills)
    }

    #[test]
    fn kill_frames_are_taken_out_wherever_the_reads_cut_the_stream() {
        let mut stream = preamble().to_vec();
        let mut expected = stream.clone();
        for body in [
            &[1u8, 2, 3][..],
            &[KILL_TAG][..],
            &[7][..],
            &[],
            &[KILL_TAG, 0][..],
        ] {
            let f = frame(body);
            if body != [KILL_TAG] {
                expected.extend_from_slice(&f);
            }
            stream.extend_from_slice(&f);
        }
        for step in [1, 2, 3, 5, 7, 64] {
            let (passed, kills) = split_in_steps(&stream, step);
            assert_eq!(kills, 1, "step {step}");
            assert_eq!(passed, expected, "step {step}");
        }
    }

    #[test]
    fn a_kill_tag_inside_a_frame_is_data() {
        let mut stream = preamble().to_vec();
        stream.extend_from_slice(&frame(&[9, 1, 0, 0, 0, KILL_TAG]));
        let (passed, kills) = split_in_steps(&stream, 3);
        assert_eq!(kills, 0);
        assert_eq!(passed, stream);
    }
}

#[cfg(test)]
mod split_tests {
    use procpool_protocol::{ItemsBuilder, encode_message, encode_run, preamble};

    use super::*;

    #[test]
    fn runs_are_counted_and_cancels_taken_out() {
        let mut stream = preamble().to_vec();
        let mut items = ItemsBuilder::default();
        for i in 0..3u64 {
            items.push_value(&i).unwrap();
        }
        let mut expected = stream.clone();
        let mut run = Vec::new();
        encode_run(&mut run, 77, 2, true, &items, 1 << 20).unwrap();
        let mut cancel = Vec::new();
        encode_message(&mut cancel, &ToWorker::Cancel { run: 12 }, 64).unwrap();
        stream.extend_from_slice(&run);
        stream.extend_from_slice(&cancel);
        stream.extend_from_slice(&run);
        expected.extend_from_slice(&run);
        expected.extend_from_slice(&run);
        for step in [1, 4, 9, 100] {
            let mut s = Split::default();
            let (mut passed, mut seen) = (Vec::new(), Vec::new());
            for chunk in stream.chunks(step) {
                for p in s.feed(chunk) {
                    match p {
                        Piece::Pass(a, b) | Piece::PassRun(a, b) => {
                            passed.extend_from_slice(&s.pending[a..b])
                        }
                        other => seen.push(other),
                    }
                }
                s.drain();
            }
            assert_eq!(passed, expected, "step {step}");
            assert_eq!(
                seen,
                [
                    Piece::Run {
                        batch: 77,
                        items: 3
                    },
                    Piece::Cancel(12),
                    Piece::Run {
                        batch: 77,
                        items: 3
                    }
                ],
                "step {step}"
            );
        }
    }
}

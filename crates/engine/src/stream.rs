//! A container's or exec's output: the engine's multiplexed stream, demultiplexed.
//!
//! Without a TTY the engine frames output: an 8-byte header `[stream, 0, 0, 0, size (u32, big
//! endian)]` then `size` bytes of payload, stream 1 being stdout and 2 stderr (0, stdin, only
//! appears when stdin is echoed, and is reported as stdout).

use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::Error;
use crate::engine::{Engine, next_chunk};

/// A frame up to this size is returned whole; a bigger one in pieces of at most this size, as
/// they arrive, so a header can never make us allocate what it claims.
const WHOLE_FRAME: usize = 1 << 20;
/// How much is read from the connection at a time.
const READ_SIZE: usize = 64 << 10;

/// Which stream a chunk of output belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The output of an attach or an exec, demultiplexed into stdout and stderr.
pub struct Output {
    request: String,
    source: Source,
    demux: Demux,
}

enum Source {
    /// An upgraded connection (the engine answered 101).
    Stream(Box<dyn AsyncRead + Send + Unpin>),
    /// A plain answer whose body is the stream (an engine that answers 200 and hijacks).
    Body(Engine, Incoming),
    Ended,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("request", &self.request).finish_non_exhaustive()
    }
}

impl Output {
    pub(crate) fn from_stream(
        request: String,
        stream: Box<dyn AsyncRead + Send + Unpin>,
        already_read: &[u8],
    ) -> Output {
        let mut demux = Demux::default();
        demux.feed(already_read);
        Output { request, source: Source::Stream(stream), demux }
    }

    pub(crate) fn from_body(request: String, engine: Engine, body: Incoming) -> Output {
        Output { request, source: Source::Body(engine, body), demux: Demux::default() }
    }

    /// The next chunk of output: a frame's payload (a frame over 1 MiB comes in pieces), `None`
    /// once the stream has ended (the container or command has closed its output).
    pub async fn next(&mut self) -> Result<Option<(StreamKind, Vec<u8>)>, Error> {
        loop {
            let chunk = self.demux.next_chunk().map_err(|message| self.protocol(message))?;
            if chunk.is_some() {
                return Ok(chunk);
            }
            let more = match &mut self.source {
                Source::Ended => None,
                Source::Stream(stream) => {
                    let mut buf = vec![0; READ_SIZE];
                    let n = stream.read(&mut buf).await.map_err(|source| Error::Io {
                        what: format!("reading the output of {}", self.request),
                        source,
                    })?;
                    buf.truncate(n);
                    (n > 0).then_some(buf)
                }
                Source::Body(engine, body) => next_chunk(engine, &self.request, body).await?.map(|b| b.to_vec()),
            };
            match more {
                Some(data) => self.demux.feed(&data),
                None => {
                    self.source = Source::Ended;
                    self.demux.finish().map_err(|message| self.protocol(message))?;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads everything left, stdout and stderr apart (for short commands and tests).
    pub async fn collect(&mut self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some((kind, data)) = self.next().await? {
            match kind {
                StreamKind::Stdout => stdout.extend_from_slice(&data),
                StreamKind::Stderr => stderr.extend_from_slice(&data),
            }
        }
        Ok((stdout, stderr))
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol { request: self.request.clone(), message }
    }
}

/// The frame parser, fed with whatever the reads return.
#[derive(Default)]
pub(crate) struct Demux {
    buf: Vec<u8>,
    /// The frame being read: its stream and how much of its payload is left.
    frame: Option<(StreamKind, usize)>,
}

impl Demux {
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next payload that can be returned from what has been fed, `None` when more is needed.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<(StreamKind, Vec<u8>)>, String> {
        loop {
            match self.frame {
                None => {
                    if self.buf.len() < 8 {
                        return Ok(None);
                    }
                    let kind = match self.buf[0] {
                        0 | 1 => StreamKind::Stdout,
                        2 => StreamKind::Stderr,
                        other => return Err(format!("a stream frame has the unknown stream type {other}")),
                    };
                    let size = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
                    self.buf.drain(..8);
                    if size > 0 {
                        self.frame = Some((kind, size));
                    }
                }
                Some((kind, left)) => {
                    let take = if left <= WHOLE_FRAME {
                        if self.buf.len() < left {
                            return Ok(None);
                        }
                        left
                    } else {
                        if self.buf.is_empty() {
                            return Ok(None);
                        }
                        left.min(self.buf.len()).min(WHOLE_FRAME)
                    };
                    let payload: Vec<u8> = self.buf.drain(..take).collect();
                    self.frame = (left > take).then_some((kind, left - take));
                    return Ok(Some((kind, payload)));
                }
            }
        }
    }

    /// At the end of the stream: nothing may be left half read.
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.frame {
            Some((_, left)) => Err(format!("the stream ended inside a frame ({left} bytes missing)")),
            None if !self.buf.is_empty() => Err("the stream ended inside a frame header".to_string()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 0, 0, 0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `data` in pieces of `step` bytes, collecting what comes out.
    fn demux(data: &[u8], step: usize) -> Result<Vec<(StreamKind, Vec<u8>)>, String> {
        let mut demux = Demux::default();
        let mut out = Vec::new();
        for piece in data.chunks(step.max(1)) {
            demux.feed(piece);
            while let Some(chunk) = demux.next_chunk()? {
                out.push(chunk);
            }
        }
        demux.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_split_across_reads_and_many_in_one_read() {
        let mut data = frame(1, b"hello\n");
        data.extend(frame(2, b"oops\n"));
        data.extend(frame(1, b""));
        data.extend(frame(0, b"echo"));
        let expected = vec![
            (StreamKind::Stdout, b"hello\n".to_vec()),
            (StreamKind::Stderr, b"oops\n".to_vec()),
            (StreamKind::Stdout, b"echo".to_vec()),
        ];
        for step in [1, 2, 3, 7, 8, 9, 13, data.len()] {
            assert_eq!(demux(&data, step).unwrap(), expected, "step {step}");
        }
    }

    #[test]
    fn unknown_stream_types_and_truncation_are_errors() {
        assert!(demux(&frame(3, b"x"), 64).unwrap_err().contains("unknown stream type 3"));
        let data = frame(1, b"hello");
        assert!(demux(&data[..data.len() - 1], 64).unwrap_err().contains("5 bytes missing"));
        assert!(demux(&data[..5], 64).unwrap_err().contains("frame header"));
    }

    #[test]
    fn a_huge_frame_is_read_in_pieces_not_allocated_from_its_header() {
        // A header claiming 4 GiB: nothing is allocated for it, the payload comes as it arrives.
        let mut demux = Demux::default();
        demux.feed(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(demux.next_chunk().unwrap(), None);
        demux.feed(b"abc");
        assert_eq!(demux.next_chunk().unwrap(), Some((StreamKind::Stdout, b"abc".to_vec())));
        assert!(demux.finish().is_err());

        // A frame just over the whole-frame size: pieces, then the next frame.
        let big = vec![b'x'; WHOLE_FRAME + 5];
        let mut data = frame(2, &big);
        data.extend(frame(1, b"after"));
        let out = demux_all(&data, READ_SIZE);
        assert!(out.iter().all(|(_, p)| p.len() <= WHOLE_FRAME));
        let stderr: usize = out.iter().filter(|(k, _)| *k == StreamKind::Stderr).map(|(_, p)| p.len()).sum();
        assert_eq!(stderr, big.len());
        assert_eq!(out.last().unwrap(), &(StreamKind::Stdout, b"after".to_vec()));
    }

    fn demux_all(data: &[u8], step: usize) -> Vec<(StreamKind, Vec<u8>)> {
        demux(data, step).unwrap()
    }

    #[test]
    fn a_frame_up_to_the_limit_comes_whole() {
        let payload = vec![b'y'; 200_000];
        let out = demux_all(&frame(1, &payload), 4096);
        assert_eq!(out, vec![(StreamKind::Stdout, payload)]);
    }
}

//! The frames of a streamed answer (`POST /v1/exec`, `POST /v1/run`, `PUT /v1/stack?progress=1`):
//! a command's output as it comes, then how it ended. Each frame is
//! `[kind: u8][length: u32, big-endian][payload]`: kind 1 is stdout, 2 stderr, 3 the exit code (its
//! decimal text), 4 why it could not run, 5 the answer the request would have had unstreamed (its
//! HTTP status as two big-endian bytes, then its JSON body).

/// The largest payload a frame may claim: a reader never allocates more for one.
pub const MAX_FRAME: usize = 1 << 20;
pub const CONTENT_TYPE: &str = "application/vnd.tug.stream";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    Error(String),
    /// The final answer: an HTTP status and the JSON body that goes with it.
    Answer(u16, Vec<u8>),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Stdout(bytes) => (1, bytes),
            Frame::Stderr(bytes) => (2, bytes),
            Frame::Exit(code) => return frame(3, code.to_string().as_bytes()),
            Frame::Error(message) => (4, message.as_bytes()),
            Frame::Answer(status, body) => {
                let payload: Vec<u8> = status.to_be_bytes().iter().chain(body).copied().collect();
                return frame(5, &payload);
            }
        };
        frame(kind, payload)
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Frames out of bytes as they arrive, whatever the pieces.
#[derive(Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived; an error for bytes that are not frames.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let kind = self.buffer[0];
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if length > MAX_FRAME {
            return Err(format!("a frame of {length} bytes is over the limit of {MAX_FRAME}"));
        }
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buffer.drain(..5 + length).skip(5).collect();
        let text = || String::from_utf8_lossy(&payload).into_owned();
        Ok(Some(match kind {
            1 => Frame::Stdout(payload.clone()),
            2 => Frame::Stderr(payload.clone()),
            3 => Frame::Exit(text().parse().map_err(|_| format!("a bad exit code frame: {:?}", text()))?),
            4 => Frame::Error(text()),
            5 => match payload.split_first_chunk::<2>() {
                Some((status, body)) => Frame::Answer(u16::from_be_bytes(*status), body.to_vec()),
                None => return Err("an answer frame without a status".into()),
            },
            other => return Err(format!("a frame of unknown kind {other}")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let frames = [
            Frame::Stdout(b"hello\n".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Error("no".into()),
            Frame::Exit(-3),
            Frame::Answer(409, b"{\"error\":\"x\"}".to_vec()),
            Frame::Answer(200, Vec::new()),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for split in 0..bytes.len() {
            let mut decoder = Decoder::default();
            let mut seen = Vec::new();
            for piece in [&bytes[..split], &bytes[split..]] {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    seen.push(frame);
                }
            }
            assert_eq!(seen, frames, "split at {split}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_an_allocation() {
        let mut decoder = Decoder::default();
        decoder.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(decoder.next_frame().unwrap_err().contains("over the limit"));
        let mut decoder = Decoder::default();
        decoder.push(&[9, 0, 0, 0, 0]);
        assert!(decoder.next_frame().is_err());
        let mut decoder = Decoder::default();
        decoder.push(&[5, 0, 0, 0, 1, 2]);
        assert!(decoder.next_frame().unwrap_err().contains("without a status"));
    }
}

//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte header, the types and flags the router
//! reads, and the frames it writes, appended to a connection's output buffer.

pub(crate) const HEADER_LEN: usize = 9;
/// The largest frame payload the router accepts: the protocol's default, which it never raises.
pub(crate) const MAX_FRAME: usize = 16_384;
/// The largest window the protocol allows (2^31 - 1).
pub(crate) const MAX_WINDOW: i64 = (1 << 31) - 1;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

pub(crate) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(crate) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub(crate) const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Error codes (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub(crate) fn parse(b: &[u8; HEADER_LEN]) -> Head {
        Head {
            len: (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize,
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt (§4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

pub(crate) fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

pub(crate) fn put_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub(crate) fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub(crate) fn put_rst(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub(crate) fn put_goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason, debug: &str) {
    put_head(out, 8 + debug.len(), GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
    out.extend_from_slice(debug.as_bytes());
}

/// A header block as HEADERS and, past `max_frame`, CONTINUATION frames.
pub(crate) fn put_headers(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let first = chunks.next().unwrap_or_default();
    let end_headers = if chunks.peek().is_none() { END_HEADERS } else { 0 };
    let end = if end_stream { END_STREAM } else { 0 };
    put_head(out, first.len(), HEADERS, end_headers | end, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let end_headers = if chunks.peek().is_none() { END_HEADERS } else { 0 };
        put_head(out, chunk.len(), CONTINUATION, end_headers, stream);
        out.extend_from_slice(chunk);
    }
}

pub(crate) fn put_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    put_head(out, data.len(), DATA, if end_stream { END_STREAM } else { 0 }, stream);
    out.extend_from_slice(data);
}

/// A padded frame's payload without its padding (§6.1): `None` if the padding is longer than
/// the frame.
pub(crate) fn unpad(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if flags & PADDED == 0 {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len().checked_sub(pad as usize).map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_ignore_the_reserved_bit() {
        let mut out = Vec::new();
        put_head(&mut out, 0x012345, HEADERS, END_HEADERS, 7);
        let mut bytes: [u8; 9] = out[..9].try_into().unwrap();
        assert_eq!(Head::parse(&bytes), Head { len: 0x012345, kind: HEADERS, flags: END_HEADERS, stream: 7 });
        bytes[5] |= 0x80;
        assert_eq!(Head::parse(&bytes).stream, 7);
    }

    #[test]
    fn a_large_header_block_is_continued() {
        let mut out = Vec::new();
        put_headers(&mut out, 1, &[7u8; 25], true, 10);
        let heads: Vec<Head> = [0, 19, 38].iter().map(|&at| Head::parse(out[at..at + 9].try_into().unwrap())).collect();
        assert_eq!(heads[0], Head { len: 10, kind: HEADERS, flags: END_STREAM, stream: 1 });
        assert_eq!(heads[1], Head { len: 10, kind: CONTINUATION, flags: 0, stream: 1 });
        assert_eq!(heads[2], Head { len: 5, kind: CONTINUATION, flags: END_HEADERS, stream: 1 });
        assert_eq!(out.len(), 27 + 25);
    }

    #[test]
    fn padding_is_taken_off_or_refused() {
        assert_eq!(unpad(0, b"abc"), Some(&b"abc"[..]));
        assert_eq!(unpad(PADDED, b"\x02abcxx"), Some(&b"abc"[..]));
        assert_eq!(unpad(PADDED, b"\x05ab"), None);
        assert_eq!(unpad(PADDED, b""), None);
    }
}

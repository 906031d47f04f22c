//! RESP2, the Redis protocol: commands out (arrays of bulk strings), replies in.
//!
//! The parser is incremental (`Ok(None)` until a whole reply is buffered) and bounded: bulk strings,
//! arrays, nesting and line lengths have caps, so a malformed or hostile reply is an error, never a
//! panic or an unbounded allocation.

use std::fmt;

/// Largest bulk string accepted (Redis' own default cap is 512 MiB; entries are a few hundred bytes).
pub const MAX_BULK: usize = 64 << 20;
/// Most elements in one array.
pub const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays.
pub const MAX_DEPTH: usize = 8;
/// Longest header line (`+`, `-`, `:`, or a length).
pub const MAX_LINE: usize = 64 << 10;

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// A nil bulk string or nil array.
    Nil,
    Array(Vec<Value>),
}

/// A reply that breaks the protocol or its caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(message.into()))
}

/// Appends a command (`*N`, then each argument as a bulk string).
pub fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: `Ok(Some((value, bytes used)))`, or `Ok(None)` when
/// more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    value(buf, 0, 0)
}

/// The line starting at `pos`, without its CRLF, and the position after it.
fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[pos.min(buf.len())..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i > MAX_LINE => err("header line too long"),
        Some(i) => Ok(Some((&rest[..i], pos + i + 2))),
        None if rest.len() > MAX_LINE + 1 => err("header line too long"),
        None => Ok(None),
    }
}

fn int(line: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return err(format!("invalid integer {:?}", String::from_utf8_lossy(line)));
    }
    let mut n: i64 = 0;
    for d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or_else(|| ProtocolError("integer out of range".into()))?;
    }
    Ok(if negative { -n } else { n })
}

/// A length: -1 (nil) or 0..=max.
fn length(line: &[u8], max: usize, what: &str) -> Result<Option<usize>, ProtocolError> {
    match int(line)? {
        -1 => Ok(None),
        n if n < 0 => err(format!("negative {what} length {n}")),
        n => match usize::try_from(n) {
            Ok(n) if n <= max => Ok(Some(n)),
            _ => err(format!("{what} of {n} elements or bytes exceeds the cap of {max}")),
        },
    }
}

fn value(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, ProtocolError> {
    let Some(&tag) = buf.get(pos) else { return Ok(None) };
    let Some((head, next)) = line(buf, pos + 1)? else { return Ok(None) };
    match tag {
        b'+' => Ok(Some((Value::Simple(String::from_utf8_lossy(head).into_owned()), next))),
        b'-' => Ok(Some((Value::Error(String::from_utf8_lossy(head).into_owned()), next))),
        b':' => Ok(Some((Value::Int(int(head)?), next))),
        b'$' => {
            let Some(n) = length(head, MAX_BULK, "bulk string")? else { return Ok(Some((Value::Nil, next))) };
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return err("bulk string not followed by CRLF");
            }
            Ok(Some((Value::Bulk(buf[next..next + n].to_vec()), next + n + 2)))
        }
        b'*' => {
            let Some(n) = length(head, MAX_ARRAY, "array")? else { return Ok(Some((Value::Nil, next))) };
            if depth >= MAX_DEPTH {
                return err("arrays nested too deeply");
            }
            // Each element takes at least 3 bytes: do not reserve more than the buffer could hold.
            let mut items = Vec::with_capacity(n.min((buf.len() - next) / 3 + 1));
            let mut at = next;
            for _ in 0..n {
                let Some((item, after)) = value(buf, at, depth + 1)? else { return Ok(None) };
                items.push(item);
                at = after;
            }
            Ok(Some((Value::Array(items), at)))
        }
        other => err(format!("unknown reply type byte 0x{other:02x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&["SET", "k", ""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        out.clear();
        encode(&[b"a\r\nb".as_slice()], &mut out);
        assert_eq!(out, b"*1\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn parses_every_type() {
        let cases: &[(&[u8], Value)] = &[
            (b"+OK\r\n", Value::Simple("OK".into())),
            (b"-ERR bad\r\n", Value::Error("ERR bad".into())),
            (b":-42\r\n", Value::Int(-42)),
            (b"$3\r\na\r\n\r\n", Value::Bulk(b"a\r\n".to_vec())),
            (b"$0\r\n\r\n", Value::Bulk(Vec::new())),
            (b"$-1\r\n", Value::Nil),
            (b"*-1\r\n", Value::Nil),
            (b"*0\r\n", Value::Array(vec![])),
            (
                b"*3\r\n:1\r\n*1\r\n$1\r\nx\r\n$-1\r\n",
                Value::Array(vec![Value::Int(1), Value::Array(vec![Value::Bulk(b"x".to_vec())]), Value::Nil]),
            ),
        ];
        for (wire, expected) in cases {
            let mut with_tail = wire.to_vec();
            with_tail.extend_from_slice(b"+next\r\n");
            assert_eq!(parse(&with_tail).unwrap(), Some((expected.clone(), wire.len())), "{wire:?}");
            // Every strict prefix is incomplete, never an error.
            for cut in 0..wire.len() {
                assert_eq!(parse(&wire[..cut]).unwrap(), None, "{wire:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn rejects_malformed_replies() {
        let bad: &[&[u8]] = &[
            b"?x\r\n",
            b":12a\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b":-\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999999\r\n",
            b"*-5\r\n",
            b"*99999999\r\n",
            b"*1\r\n?\r\n",
        ];
        for wire in bad {
            assert!(parse(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(parse(&long).is_err());
    }

    #[test]
    fn never_panics_on_noise() {
        // A deterministic pseudo-random walk over byte strings built from protocol fragments.
        let pieces: &[&[u8]] = &[b"*", b"$", b":", b"+", b"-", b"\r\n", b"1", b"2", b"-1", b"0", b"x", b"\r", b"9"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut wire = Vec::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                wire.extend_from_slice(pieces[(seed % pieces.len() as u64) as usize]);
            }
            seed = seed.wrapping_add(1);
            if let Ok(Some((_, used))) = parse(&wire) {
                assert!(used <= wire.len());
            }
        }
    }
}

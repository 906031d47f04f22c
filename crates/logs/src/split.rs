//! Cutting a byte stream into bounded lines.

/// The longest line [`LineSplitter::default`] passes on whole: 16 KiB.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Splits a byte stream (an instance's stdout or stderr, as it is read from the pipe) into lines,
/// with bounded memory whatever the stream holds.
///
/// Lines are passed on without their `\n`, and without a `\r` just before it. A line longer than
/// `max_line` bytes is passed on in pieces of at most `max_line` bytes, cut at a UTF-8 character
/// boundary when there is one within the last 3 bytes of the piece. Blank lines are passed on as
/// empty lines. Pure: no I/O, and the splitter never holds more than `max_line + 1` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    /// The start of a line whose end has not arrived yet. Never longer than `max_line + 1`: one byte
    /// more than a piece, so that a line of exactly `max_line` bytes followed by `\r\n` arriving in
    /// another read is not cut before its `\r` is known to end it.
    partial: Vec<u8>,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter that passes on lines of at most `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        Self { max_line: max_line.max(1), partial: Vec::new() }
    }

    /// Splits the next bytes of the stream, calling `out` with each line (or piece of a long line)
    /// that is complete. The start of a line that is not is kept for the next call.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(newline);
            if self.partial.is_empty() {
                // The common case: a whole line in one read, passed on without a copy.
                emit(line, self.max_line, out);
            } else {
                self.extend(line, out);
                emit(&self.partial, self.max_line, out);
                self.partial.clear();
            }
            bytes = rest.get(1..).unwrap_or_default();
        }
        self.extend(bytes, out);
    }

    /// At the end of the stream: passes on the last line if it had no `\n`.
    pub fn finish(&mut self, out: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial, self.max_line, out);
            self.partial.clear();
        }
    }

    /// Adds bytes of an unfinished line, passing on pieces as soon as they cannot grow any more.
    fn extend(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        let max = self.max_line;
        // In steps of `max`, so that the buffer never holds much more than one piece.
        for step in bytes.chunks(max) {
            self.partial.extend_from_slice(step);
            while self.partial.len() > max + 1 {
                let cut = boundary(&self.partial, max);
                out(&self.partial[..cut]);
                self.partial.drain(..cut);
            }
        }
    }
}

/// Passes on a complete line, in pieces if it is too long.
fn emit(line: &[u8], max: usize, out: &mut impl FnMut(&[u8])) {
    let mut line = line.strip_suffix(b"\r").unwrap_or(line);
    while line.len() > max {
        let (piece, rest) = line.split_at(boundary(line, max));
        out(piece);
        line = rest;
    }
    out(line);
}

/// Where to cut `bytes` (longer than `max`) for a first piece of at most `max` bytes: before the
/// character that would be split, if that character starts within the last 3 bytes (a UTF-8
/// character is at most 4 bytes); otherwise (not UTF-8) at `max`. Always between 1 and `max`.
pub(crate) fn boundary(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |at: usize| bytes.get(at).is_some_and(|&b| b & 0xC0 == 0x80);
    let lowest = max.saturating_sub(3).max(1);
    (lowest..=max).rev().find(|&at| !is_continuation(at)).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `splitter` passes on for `chunks` read one after the other, then the end.
    fn split(mut splitter: LineSplitter, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut out = |line: &[u8]| lines.push(line.to_vec());
        for chunk in chunks {
            splitter.push(chunk, &mut out);
            assert!(splitter.partial.len() <= splitter.max_line + 1);
        }
        splitter.finish(&mut out);
        lines
    }

    fn strings(lines: &[&str]) -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn splits_lines_across_reads() {
        let lines = split(LineSplitter::default(), &[b"one\ntw", b"o\n\nthr", b"ee", b"\nfour"]);
        assert_eq!(lines, strings(&["one", "two", "", "three", "four"]));
        // A stream that ends with a newline has no empty last line.
        assert_eq!(split(LineSplitter::default(), &[b"a\n", b"b\n"]), strings(&["a", "b"]));
        assert_eq!(split(LineSplitter::default(), &[b"", b"\n"]), strings(&[""]));
        assert!(split(LineSplitter::default(), &[b""]).is_empty());
    }

    #[test]
    fn drops_carriage_return_before_newline() {
        let lines = split(LineSplitter::default(), &[b"dos\r\nsplit\r", b"\nmid\rdle\r\r\n", b"last\r"]);
        assert_eq!(lines, strings(&["dos", "split", "mid\rdle\r", "last"]));
    }

    #[test]
    fn cuts_long_lines() {
        let long = "x".repeat(10);
        assert_eq!(
            split(LineSplitter::new(4), &[format!("{long}\nok\n").as_bytes()]),
            strings(&["xxxx", "xxxx", "xx", "ok"])
        );
        // The same, arriving a byte at a time.
        let bytes = format!("{long}\nok\n").into_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(split(LineSplitter::new(4), &chunks), strings(&["xxxx", "xxxx", "xx", "ok"]));
        // Exactly max_line bytes is one line, with or without "\r\n", even when "\r" comes later.
        assert_eq!(split(LineSplitter::new(4), &[b"abcd\r\n"]), strings(&["abcd"]));
        assert_eq!(split(LineSplitter::new(4), &[b"abcd", b"\r", b"\n"]), strings(&["abcd"]));
        assert_eq!(split(LineSplitter::new(4), &[b"abcde\n"]), strings(&["abcd", "e"]));
        assert_eq!(split(LineSplitter::new(4), &[b"abcdefgh"]), strings(&["abcd", "efgh"]));
    }

    #[test]
    fn cuts_at_character_boundaries() {
        // "é" is 2 bytes, "€" 3, "𝄞" 4: a piece ends before a character that would not fit.
        assert_eq!(split(LineSplitter::new(4), &["abcé\n".as_bytes()]), strings(&["abc", "é"]));
        assert_eq!(split(LineSplitter::new(4), &["a€€\n".as_bytes()]), strings(&["a€", "€"]));
        assert_eq!(split(LineSplitter::new(5), &["a𝄞𝄞\n".as_bytes()]), strings(&["a𝄞", "𝄞"]));
        let text = "ünïcødé ".repeat(500);
        for max in [4, 5, 7, 100] {
            let bytes = text.as_bytes();
            let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
            let lines = split(LineSplitter::new(max), &chunks);
            assert!(lines.iter().all(|l| l.len() <= max && std::str::from_utf8(l).is_ok()), "max {max}");
            assert_eq!(lines.concat(), bytes);
        }
        // Bytes that are not UTF-8 are cut at max_line.
        assert_eq!(split(LineSplitter::new(2), &[b"\x80\x80\x80\n"]), vec![b"\x80\x80".to_vec(), b"\x80".to_vec()]);
    }

    #[test]
    fn a_huge_line_is_passed_on_without_being_held() {
        let mut splitter = LineSplitter::new(1000);
        let mut total = 0;
        let mut pieces = 0;
        let chunk = vec![b'y'; 65_536];
        for _ in 0..64 {
            splitter.push(&chunk, &mut |piece: &[u8]| {
                assert_eq!(piece.len(), 1000);
                total += piece.len();
                pieces += 1;
            });
            assert!(splitter.partial.len() <= 1001);
        }
        splitter.push(b"\n", &mut |piece: &[u8]| total += piece.len());
        assert_eq!(total, 64 * 65_536);
        assert_eq!(pieces, 64 * 65_536 / 1000);
    }

    #[test]
    fn boundary_is_always_a_valid_cut() {
        assert_eq!(boundary(b"abcdef", 4), 4);
        assert_eq!(boundary(b"\x80\x80\x80\x80\x80", 1), 1);
        assert_eq!(boundary("ab€".as_bytes(), 3), 2);
        assert_eq!(boundary("é".as_bytes(), 1), 1);
    }
}

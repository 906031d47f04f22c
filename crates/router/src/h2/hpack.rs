//! HPACK (RFC 7541): the decoder every request's header block goes through, with its dynamic
//! table, and the encoder of the router's responses, which needs none: each field is an index
//! into the static table or a literal that is not indexed, so the peer's table never changes
//! and nothing is kept per connection on the sending side.

use std::collections::VecDeque;

use super::huffman;

/// RFC 7541 Appendix A.
static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block cannot be decoded: a connection error (COMPRESSION_ERROR), since the
/// two sides' tables may no longer agree.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Error {
    /// The block ends inside a field.
    Truncated,
    /// An integer too large for any real field.
    Overflow,
    /// An index that is neither in the static nor in the dynamic table.
    BadIndex(usize),
    /// A table size update above what the router allows, or after the first field.
    BadSizeUpdate,
    Huffman,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Truncated => write!(f, "a header block ends inside a field"),
            Error::Overflow => write!(f, "a header block holds an integer out of range"),
            Error::BadIndex(i) => write!(f, "a header block refers to table entry {i}, which does not exist"),
            Error::BadSizeUpdate => write!(f, "a header block resizes the table beyond the limit or too late"),
            Error::Huffman => write!(f, "a header block holds an invalid Huffman-coded string"),
        }
    }
}

/// An entry's size as the table counts it (RFC 7541 §4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// The dynamic table's entries (name, value), newest first.
type Table = VecDeque<(Box<[u8]>, Box<[u8]>)>;

/// The decoding side of one connection.
pub(crate) struct Decoder {
    table: Table,
    size: usize,
    /// The size the peer's encoder last chose (at most `limit`).
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as the router announced it.
    limit: usize,
    /// Scratch space for Huffman-decoded names and values.
    scratch: Vec<u8>,
}

impl Decoder {
    pub(crate) fn new(limit: usize) -> Decoder {
        Decoder { table: VecDeque::new(), size: 0, max_size: limit, limit, scratch: Vec::new() }
    }

    /// Decodes `block`, calling `field(name, value)` for each field in order.
    pub(crate) fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut at, 7)?;
                let (name, value) = entry(&self.table, index)?;
                field(name, value);
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                let size = integer(block, &mut at, 5)?;
                if fields_seen || size > self.limit {
                    return Err(Error::BadSizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let (prefix, indexing) = if first & 0xc0 == 0x40 { (6, true) } else { (4, false) };
                let name_index = integer(block, &mut at, prefix)?;
                self.scratch.clear();
                let name = if name_index == 0 {
                    string(block, &mut at, &mut self.scratch)?
                } else {
                    let (name, _) = entry(&self.table, name_index)?;
                    let start = self.scratch.len();
                    self.scratch.extend_from_slice(name);
                    Text::Scratch(start, self.scratch.len())
                };
                let value = string(block, &mut at, &mut self.scratch)?;
                let (name, value) = (name.get(block, &self.scratch), value.get(block, &self.scratch));
                field(name, value);
                if indexing {
                    let (name, value) = (Box::from(name), Box::from(value));
                    self.insert(name, value);
                }
                fields_seen = true;
            }
        }
        Ok(())
    }

    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = entry_size(&name, &value);
        self.evict(size);
        // An entry larger than the whole table empties it and is not kept (§4.4).
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.table.pop_back() else { break };
            self.size -= entry_size(&name, &value);
        }
    }
}

/// Entry `index` of the static table, then the dynamic one (§2.3.3).
fn entry(table: &Table, index: usize) -> Result<(&[u8], &[u8]), Error> {
    match index {
        0 => Err(Error::BadIndex(0)),
        1..=61 => {
            let (name, value) = STATIC_TABLE[index - 1];
            Ok((name.as_bytes(), value.as_bytes()))
        }
        _ => table.get(index - 62).map(|(n, v)| (&n[..], &v[..])).ok_or(Error::BadIndex(index)),
    }
}

/// Where a decoded string is: in the block itself, or in the scratch buffer.
enum Text {
    Block(usize, usize),
    Scratch(usize, usize),
}

impl Text {
    fn get<'a>(&self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match *self {
            Text::Block(a, b) => &block[a..b],
            Text::Scratch(a, b) => &scratch[a..b],
        }
    }
}

/// A prefixed integer (§5.1) starting at `block[*at]`, whose first byte keeps `prefix` bits.
fn integer(block: &[u8], at: &mut usize, prefix: u32) -> Result<usize, Error> {
    let mask = (1usize << prefix) - 1;
    let mut value = (*block.get(*at).ok_or(Error::Truncated)? as usize) & mask;
    *at += 1;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(Error::Truncated)?;
        *at += 1;
        // Four continuation bytes reach 2^28: more than any header block the router accepts.
        if shift > 21 {
            return Err(Error::Overflow);
        }
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal (§5.2), Huffman-coded ones decoded into `scratch`.
fn string(block: &[u8], at: &mut usize, scratch: &mut Vec<u8>) -> Result<Text, Error> {
    let huffman = *block.get(*at).ok_or(Error::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).filter(|&end| end <= block.len()).ok_or(Error::Truncated)?;
    let raw = *at..end;
    *at = end;
    if !huffman {
        return Ok(Text::Block(raw.start, raw.end));
    }
    let start = scratch.len();
    huffman::decode(&block[raw], scratch).map_err(|_| Error::Huffman)?;
    Ok(Text::Scratch(start, scratch.len()))
}

/// Appends a prefixed integer with the first byte's other bits `flags`.
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u32, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Encodes `:status`: one byte for the seven the static table holds.
pub(crate) fn encode_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
        return;
    }
    // Literal without indexing, the name being entry 8 (`:status`).
    put_integer(out, 0, 4, 8);
    let digits = [b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8];
    put_string(out, &digits);
}

/// Encodes a field as a literal without indexing: its name by static index when it has one.
/// `name` is lower case (as `http::HeaderName` keeps it).
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match static_name_index(name) {
        Some(index) => put_integer(out, 0, 4, index),
        None => {
            out.push(0);
            put_string(out, name);
        }
    }
    put_string(out, value);
}

/// The static table's index of a name a response commonly carries (the first entry with it).
fn static_name_index(name: &[u8]) -> Option<usize> {
    // The regular names are entries 15..=61; the first of a repeated name is the one found.
    STATIC_TABLE[14..].iter().position(|(n, _)| n.as_bytes() == name).map(|i| i + 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn fields(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        decoder.decode(block, |n, v| {
            out.push((String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
        })?;
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn table(decoder: &Decoder) -> Vec<(String, String)> {
        decoder
            .table
            .iter()
            .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn decodes_the_rfc_request_examples_without_huffman() {
        // RFC 7541 C.3: three requests on one connection.
        let mut d = Decoder::new(4096);
        let first = fields(&mut d, &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")).unwrap();
        assert_eq!(
            first,
            pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        assert_eq!(d.size, 57);
        let second = fields(&mut d, &hex("8286 84be 5808 6e6f 2d63 6163 6865")).unwrap();
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(d.size, 110);
        let third =
            fields(&mut d, &hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65")).unwrap();
        assert_eq!(
            third,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn decodes_the_rfc_request_examples_with_huffman() {
        // RFC 7541 C.4.
        let mut d = Decoder::new(4096);
        let first = fields(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(first[3], (":authority".into(), "www.example.com".into()));
        let second = fields(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        let third = fields(&mut d, &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
        assert_eq!(third[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn evicts_as_the_rfc_response_examples_do() {
        // RFC 7541 C.5: a 256-byte table, so the third response evicts.
        let mut d = Decoder::new(256);
        let blocks = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 \
             3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 \
             7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 \
             6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ];
        for block in &blocks[..2] {
            fields(&mut d, &hex(block)).unwrap();
        }
        assert_eq!(d.size, 222);
        let third = fields(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(third[0], (":status".into(), "200".into()));
        assert_eq!(third[5].0, "set-cookie");
        assert_eq!(table(&d).len(), 3);
        assert_eq!(d.size, 215);
    }

    #[test]
    fn refuses_what_is_not_hpack() {
        let mut d = Decoder::new(4096);
        assert_eq!(fields(&mut d, &[0x80]), Err(Error::BadIndex(0)));
        assert_eq!(fields(&mut d, &[0xbe]), Err(Error::BadIndex(62)), "an empty dynamic table");
        assert_eq!(fields(&mut d, &[0x41, 0x05, b'a']), Err(Error::Truncated));
        assert_eq!(fields(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(Error::Overflow));
        assert_eq!(fields(&mut d, &[0x3f, 0xe2, 0x1f]), Err(Error::BadSizeUpdate), "4097 > 4096");
        assert_eq!(fields(&mut d, &[0x82, 0x20]), Err(Error::BadSizeUpdate), "after a field");
        assert_eq!(fields(&mut d, &[0x40, 0x81, 0x00, 0x00]), Err(Error::Huffman));
        // A size update to 0 empties the table.
        fields(&mut d, &hex("4003 6b65 7903 7661 6c")).unwrap();
        assert_eq!(d.size, 38);
        fields(&mut d, &[0x20]).unwrap();
        assert_eq!((d.size, d.table.len()), (0, 0));
    }

    #[test]
    fn what_it_encodes_decodes_back() {
        let mut out = Vec::new();
        for status in [200, 404, 503, 101, 999] {
            encode_status(&mut out, status);
        }
        encode_field(&mut out, b"content-type", b"text/plain");
        encode_field(&mut out, b"x-custom", b"v");
        encode_field(&mut out, b"x-long", "x".repeat(300).as_bytes());
        let decoded = fields(&mut Decoder::new(4096), &out).unwrap();
        let long = "x".repeat(300);
        assert_eq!(
            decoded,
            pairs(&[
                (":status", "200"),
                (":status", "404"),
                (":status", "503"),
                (":status", "101"),
                (":status", "999"),
                ("content-type", "text/plain"),
                ("x-custom", "v"),
                ("x-long", &long),
            ])
        );
        assert_eq!(&out[..2], &[0x88, 0x8d], "one byte each for 200 and 404");
    }
}

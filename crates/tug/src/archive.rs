//! The backup archive (`tug backup`, `tug restore`): one file, encrypted and authenticated as a
//! whole, written and read as a stream so a dump of any size never sits in memory.
//!
//! ```text
//! tug-backup 1\n
//! {"project":"shop","created":"2026-12-07T03:00:00Z","key_id":"…","archive":"…","services":[…]}\n
//! frame*     each: u32 length (big-endian), then XChaCha20-Poly1305(nonce ‖ ciphertext ‖ tag)
//! ```
//!
//! The header line is plain (names only: no value, no secret) so a wrong archive or key is
//! named before anything is decrypted. Each frame's plaintext is a kind byte and a payload:
//! `1` begins an entry (`file:NAME`, `dump:SERVICE` or `volume:NAME`), `2` is up to 64 KiB of its bytes, `3`
//! ends it, `4` ends the archive. A frame is sealed under the archive key with, as associated
//! data, the digest of the magic and header lines and the frame's index: a changed header,
//! a frame moved, dropped, or taken from another archive fails to open, and an archive cut
//! short lacks its end frame. The archive key is derived from the stack's secrets key, so
//! whoever keeps that key (`.tug/secrets.key` or `TUG_SECRETS_KEY`) can restore, and nobody
//! else can read anything but the header.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const MAGIC: &[u8] = b"tug-backup 1\n";
/// The file name ending `tug backup` uses.
pub const EXTENSION: &str = "tug-backup";
/// What the archive key is derived for, from the secrets key.
pub const KEY_PURPOSE: &str = "tug backup archive v1";
/// Bytes of an entry per frame.
const FRAME_DATA: usize = 64 << 10;
/// A sealed frame: its plaintext (a kind byte and at most `FRAME_DATA`), nonce and tag.
const MAX_SEALED: usize = FRAME_DATA + 1 + 24 + 16;
const MAX_HEADER: u64 = 64 << 10;

const BEGIN: u8 = 1;
const DATA: u8 = 2;
const END: u8 = 3;
const FINISH: u8 = 4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub project: String,
    pub created: String,
    /// Which key sealed it (a digest of the key, not the key).
    pub key_id: String,
    /// Random: frames of one archive cannot be passed off as another's.
    pub archive: String,
    /// The services whose dumps it holds.
    pub services: Vec<String>,
}

/// What an archive holds, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A file of the state folder.
    File(String),
    /// A service's dump.
    Dump(String),
    /// A named volume's files, as the engine's tar of its folder.
    Volume(String),
}

impl Entry {
    fn encode(&self) -> String {
        match self {
            Entry::File(name) => format!("file:{name}"),
            Entry::Dump(service) => format!("dump:{service}"),
            Entry::Volume(name) => format!("volume:{name}"),
        }
    }

    fn decode(text: &str) -> Option<Entry> {
        let (kind, name) = text.split_once(':')?;
        let valid = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        match kind {
            "file" if valid => Some(Entry::File(name.to_string())),
            "dump" if valid => Some(Entry::Dump(name.to_string())),
            "volume" if valid => Some(Entry::Volume(name.to_string())),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("it is not a tug backup archive")]
    NotAnArchive,
    #[error("its header is damaged: {0}")]
    Header(String),
    #[error(
        "it was made with another key (its key id is {archive}, this key's is {ours}): restore with the \
         secrets key of the stack it came from (`--key-file` or TUG_SECRETS_KEY)"
    )]
    OtherKey { archive: String, ours: String },
    #[error("it fails its integrity check at frame {frame} (byte {offset}): {why}")]
    Damaged { frame: u64, offset: u64, why: String },
    #[error("it is cut short: it ends at byte {0} before its last frame")]
    Truncated(u64),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Names the key without showing it.
pub fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new().chain_update(b"tug backup key id\0").chain_update(key).finalize();
    tug_proto::auth::hex(&digest[..8])
}

fn bound(header_line: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(MAGIC).chain_update(header_line).finalize().into()
}

fn associated(bound: &[u8; 32], index: u64) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..32].copy_from_slice(bound);
    aad[32..].copy_from_slice(&index.to_be_bytes());
    aad
}

pub struct Writer<W: Write> {
    out: W,
    key: Zeroizing<[u8; 32]>,
    bound: [u8; 32],
    index: u64,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, key: &[u8; 32], header: &Header) -> io::Result<Self> {
        let mut line = serde_json::to_vec(header).map_err(io::Error::other)?;
        line.push(b'\n');
        out.write_all(MAGIC)?;
        out.write_all(&line)?;
        let written = (MAGIC.len() + line.len()) as u64;
        Ok(Writer { out, key: Zeroizing::new(*key), bound: bound(&line), index: 0, written })
    }

    pub fn begin(&mut self, entry: &Entry) -> io::Result<()> {
        self.frame(BEGIN, entry.encode().as_bytes())
    }

    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        for piece in bytes.chunks(FRAME_DATA) {
            self.frame(DATA, piece)?;
        }
        Ok(())
    }

    pub fn end(&mut self) -> io::Result<()> {
        self.frame(END, &[])
    }

    /// Writes the end frame; the archive's size and its output.
    pub fn finish(mut self) -> io::Result<(u64, W)> {
        self.frame(FINISH, &[])?;
        self.out.flush()?;
        Ok((self.written, self.out))
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let mut plain = Zeroizing::new(Vec::with_capacity(1 + payload.len()));
        plain.push(kind);
        plain.extend_from_slice(payload);
        let sealed = tug_secrets::seal_bytes(&self.key, &associated(&self.bound, self.index), &plain)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.out.write_all(&(sealed.len() as u32).to_be_bytes())?;
        self.out.write_all(&sealed)?;
        self.index += 1;
        self.written += 4 + sealed.len() as u64;
        Ok(())
    }
}

/// One step of reading an archive.
pub enum Item {
    Begin(Entry),
    Data(Zeroizing<Vec<u8>>),
    End,
}

pub struct Reader<R: Read> {
    input: R,
    key: Zeroizing<[u8; 32]>,
    bound: [u8; 32],
    index: u64,
    offset: u64,
    open: bool,
    done: bool,
}

/// The header of the archive `input` starts with, read without the key.
pub fn read_header<R: Read>(input: &mut R) -> Result<(Header, Vec<u8>), ArchiveError> {
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic).map_err(|_| ArchiveError::NotAnArchive)?;
    if magic != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if input.read(&mut byte)? == 0 {
            return Err(ArchiveError::Header("it ends before its first line does".into()));
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
        if line.len() as u64 > MAX_HEADER {
            return Err(ArchiveError::Header("its first line is too long".into()));
        }
    }
    let header: Header = serde_json::from_slice(&line).map_err(|e| ArchiveError::Header(e.to_string()))?;
    Ok((header, line))
}

impl<R: Read> Reader<R> {
    /// A reader of the frames after the header (`header_line` as [`read_header`] gave it).
    pub fn new(input: R, key: &[u8; 32], header: &Header, header_line: &[u8]) -> Result<Self, ArchiveError> {
        let ours = key_id(key);
        if header.key_id != ours {
            return Err(ArchiveError::OtherKey { archive: header.key_id.clone(), ours });
        }
        let offset = (MAGIC.len() + header_line.len()) as u64;
        Ok(Reader {
            input,
            key: Zeroizing::new(*key),
            bound: bound(header_line),
            index: 0,
            offset,
            open: false,
            done: false,
        })
    }

    /// The next item; `None` once the end frame is read (and nothing follows it).
    pub fn next_item(&mut self) -> Result<Option<Item>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        let damaged = |reader: &Self, why: &str| ArchiveError::Damaged {
            frame: reader.index,
            offset: reader.offset,
            why: why.to_string(),
        };
        let mut length = [0u8; 4];
        if !read_full(&mut self.input, &mut length)? {
            return Err(ArchiveError::Truncated(self.offset));
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_SEALED {
            return Err(damaged(self, &format!("a frame of {length} bytes is larger than any tug writes")));
        }
        let mut sealed = vec![0u8; length];
        if !read_full(&mut self.input, &mut sealed)? {
            return Err(ArchiveError::Truncated(self.offset));
        }
        let plain = tug_secrets::open_bytes(&self.key, &associated(&self.bound, self.index), &sealed)
            .map_err(|_| damaged(self, "it was changed, moved, or taken from another archive"))?;
        let (kind, payload) = plain.split_first().ok_or_else(|| damaged(self, "an empty frame"))?;
        let item = match (*kind, self.open) {
            (BEGIN, false) => {
                let text = std::str::from_utf8(payload).ok().and_then(Entry::decode);
                let entry = text.ok_or_else(|| damaged(self, "an entry with an invalid name"))?;
                self.open = true;
                Some(Item::Begin(entry))
            }
            (DATA, true) => Some(Item::Data(Zeroizing::new(payload.to_vec()))),
            (END, true) => {
                self.open = false;
                Some(Item::End)
            }
            (FINISH, false) => {
                let mut more = [0u8; 1];
                if self.input.read(&mut more)? != 0 {
                    return Err(damaged(self, "bytes follow its last frame"));
                }
                self.done = true;
                None
            }
            _ => return Err(damaged(self, "frames out of order")),
        };
        self.index += 1;
        self.offset += 4 + length as u64;
        Ok(item)
    }
}

/// Fills `buf`; false when the input ends first.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A random identifier, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_default();
    tug_proto::auth::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &[u8; 32]) -> Header {
        Header {
            project: "shop".into(),
            created: "2026-12-07T03:00:00Z".into(),
            key_id: key_id(key),
            archive: random_id(),
            services: vec!["postgres".into()],
        }
    }

    fn archive(key: &[u8; 32], dump: &[u8]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), key, &header(key)).unwrap();
        w.begin(&Entry::File("rollouts.json".into())).unwrap();
        w.data(b"{}").unwrap();
        w.end().unwrap();
        w.begin(&Entry::Dump("postgres".into())).unwrap();
        w.data(dump).unwrap();
        w.end().unwrap();
        w.finish().unwrap().1
    }

    /// Every entry with its bytes, or the first error.
    fn read_all(bytes: &[u8], key: &[u8; 32]) -> Result<Vec<(Entry, Vec<u8>)>, ArchiveError> {
        let mut input = bytes;
        let (header, line) = read_header(&mut input)?;
        let mut reader = Reader::new(input, key, &header, &line)?;
        let mut entries: Vec<(Entry, Vec<u8>)> = Vec::new();
        while let Some(item) = reader.next_item()? {
            match item {
                Item::Begin(entry) => entries.push((entry, Vec::new())),
                Item::Data(bytes) => entries.last_mut().unwrap().1.extend_from_slice(&bytes),
                Item::End => {}
            }
        }
        Ok(entries)
    }

    #[test]
    fn what_is_written_reads_back_and_no_byte_of_it_is_plain() {
        let key = [7u8; 32];
        let dump: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).chain(*b"hunter2-secret-row").collect();
        let bytes = archive(&key, &dump);
        assert!(!bytes.windows(18).any(|w| w == b"hunter2-secret-row"));
        let entries = read_all(&bytes, &key).unwrap();
        assert_eq!(entries[0], (Entry::File("rollouts.json".into()), b"{}".to_vec()));
        assert_eq!(entries[1].0, Entry::Dump("postgres".into()));
        assert_eq!(entries[1].1, dump);
    }

    #[test]
    fn a_changed_cut_or_foreign_archive_is_refused() {
        let key = [7u8; 32];
        let bytes = archive(&key, b"rows");
        // Another key.
        assert!(matches!(read_all(&bytes, &[8u8; 32]), Err(ArchiveError::OtherKey { .. })));
        // A byte changed in the last frames, in the header, or the file cut short.
        let mut flipped = bytes.clone();
        let at = bytes.len() - 30;
        flipped[at] ^= 0x40;
        assert!(matches!(read_all(&flipped, &key), Err(ArchiveError::Damaged { .. })), "flipped byte");
        let renamed = String::from_utf8_lossy(&bytes).replacen("\"shop\"", "\"shoq\"", 1).into_bytes();
        let renamed = [&renamed[..MAGIC.len() + 60], &bytes[MAGIC.len() + 60..]].concat();
        assert!(read_all(&renamed, &key).is_err(), "a changed header");
        for cut in [bytes.len() - 1, bytes.len() - 60, MAGIC.len() + 5] {
            assert!(read_all(&bytes[..cut], &key).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer, &key).is_err(), "trailing bytes");
        // A frame of another archive with the same key does not fit this one.
        let other = archive(&key, b"rows");
        let (_, line_a) = read_header(&mut &bytes[..]).unwrap();
        let (_, line_b) = read_header(&mut &other[..]).unwrap();
        let spliced = [&bytes[..MAGIC.len() + line_a.len()], &other[MAGIC.len() + line_b.len()..]].concat();
        assert!(matches!(read_all(&spliced, &key), Err(ArchiveError::Damaged { .. })));
        assert!(matches!(read_all(b"PK\x03\x04 zip", &key), Err(ArchiveError::NotAnArchive)));
    }

    #[test]
    fn entry_names_cannot_leave_the_state_folder() {
        assert_eq!(Entry::decode("file:secrets.enc"), Some(Entry::File("secrets.enc".into())));
        for bad in ["file:../x", "file:/etc/passwd", "file:.", "file:", "dump:a/b", "other:x"] {
            assert_eq!(Entry::decode(bad), None, "{bad}");
        }
    }
}

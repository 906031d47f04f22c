//! A minimal tar writer for build contexts: ustar headers, with a PAX extended header for a name
//! or link target over 100 bytes. Regular files, directories and symlinks; owner 0:0 and mtime 0,
//! so the same context always gives the same archive.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    File { size: u64 },
    Dir,
    Symlink { target: String },
}

/// Writes an archive to `W`.
pub(crate) struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> TarWriter<W> {
        TarWriter { out }
    }

    /// Appends an entry; for a file, `data` must give exactly `size` bytes (fewer or more is an
    /// error: the file changed while it was being sent).
    pub(crate) fn append(&mut self, name: &str, mode: u32, kind: &Kind, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut name = name.to_string();
        if *kind == Kind::Dir && !name.ends_with('/') {
            name.push('/');
        }
        let link = match kind {
            Kind::Symlink { target } => target.as_str(),
            _ => "",
        };
        if name.len() > 100 || link.len() > 100 {
            let mut records = Vec::new();
            if name.len() > 100 {
                records.extend(pax_record("path", &name));
            }
            if link.len() > 100 {
                records.extend(pax_record("linkpath", link));
            }
            let header = header(&format!("PaxHeaders/{}", short(&name, 80)), 0o644, b'x', records.len() as u64, "");
            self.out.write_all(&header)?;
            self.write_padded(&mut records.as_slice(), records.len() as u64)?;
        }
        let (flag, size) = match kind {
            Kind::File { size } => (b'0', *size),
            Kind::Dir => (b'5', 0),
            Kind::Symlink { .. } => (b'2', 0),
        };
        self.out.write_all(&header(short(&name, 100), mode & 0o7777, flag, size, short(link, 100)))?;
        if let Kind::File { size } = kind {
            match data {
                Some(data) => self.write_padded(data, *size)?,
                None => return Err(io::Error::other("a file entry needs its contents")),
            }
        }
        Ok(())
    }

    /// Ends the archive (two zero blocks) and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Copies exactly `size` bytes from `data`, then zeros to the next block.
    fn write_padded(&mut self, data: &mut dyn Read, size: u64) -> io::Result<()> {
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it became shorter while being sent"));
        }
        let mut probe = [0u8; 1];
        if data.read(&mut probe)? != 0 {
            return Err(io::Error::other("it became longer while being sent"));
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        self.out.write_all(&vec![0; pad])
    }
}

/// The size of an entry in the archive, headers and padding included, for the context limit.
pub(crate) fn entry_size(name: &str, kind: &Kind) -> u64 {
    let data = match kind {
        Kind::File { size } => size.div_ceil(BLOCK as u64) * BLOCK as u64,
        _ => 0,
    };
    let link = match kind {
        Kind::Symlink { target } => target.len(),
        _ => 0,
    };
    // One header, and when a name is long a PAX header and its records (with room to spare).
    let pax = if name.len() + 1 > 100 || link > 100 { 1 + (name.len() + link + 64).div_ceil(BLOCK) } else { 0 };
    data + (BLOCK * (1 + pax)) as u64
}

/// The longest prefix of `s` of at most `limit` bytes that ends on a character boundary.
fn short(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One PAX record: `"<length> <key>=<value>\n"`, the length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut length = rest + 1;
    while length != rest + length.to_string().len() {
        length = rest + length.to_string().len();
    }
    format!("{length} {key}={value}\n").into_bytes()
}

fn header(name: &str, mode: u32, flag: u8, size: u64, link: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(digits.as_bytes());
    h
}

/// Zero-padded octal filling the field but its last byte (a NUL). Sizes here stay far below the
/// 8 GiB that 11 digits hold: the context is limited to 1 GiB.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(width)..];
    field[..width].copy_from_slice(text);
    field[width] = 0;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry as read back from an archive.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Entry {
        pub(crate) name: String,
        pub(crate) mode: u32,
        pub(crate) kind: Kind,
        pub(crate) data: Vec<u8>,
    }

    fn field(h: &[u8]) -> String {
        let end = h.iter().position(|&b| b == 0).unwrap_or(h.len());
        String::from_utf8(h[..end].to_vec()).unwrap()
    }

    fn number(h: &[u8]) -> u64 {
        let text = field(h);
        u64::from_str_radix(text.trim(), 8).unwrap()
    }

    /// A strict reader for what [`TarWriter`] writes: checks checksums, PAX records and padding.
    pub(crate) fn read_archive(data: &[u8]) -> Vec<Entry> {
        assert_eq!(data.len() % BLOCK, 0, "not whole blocks");
        let mut out = Vec::new();
        let mut at = 0;
        let mut pax_path = None;
        let mut pax_link = None;
        loop {
            let h = &data[at..at + BLOCK];
            at += BLOCK;
            if h.iter().all(|&b| b == 0) {
                assert!(data[at..].iter().all(|&b| b == 0));
                assert_eq!(data.len() - at, BLOCK, "two zero blocks end the archive");
                return out;
            }
            let mut copy = h.to_vec();
            copy[148..156].copy_from_slice(b"        ");
            let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
            assert_eq!(number(&h[148..156]), sum, "checksum");
            assert_eq!(&h[257..263], b"ustar\0");
            assert_eq!(number(&h[136..148]), 0, "mtime");
            let size = number(&h[124..136]) as usize;
            let body = data[at..at + size].to_vec();
            at += size.div_ceil(BLOCK) * BLOCK;
            match h[156] {
                b'x' => {
                    let text = String::from_utf8(body).unwrap();
                    let mut rest = text.as_str();
                    while !rest.is_empty() {
                        let (length, _) = rest.split_once(' ').unwrap();
                        let length: usize = length.parse().unwrap();
                        let record = &rest[..length];
                        assert!(record.ends_with('\n'));
                        let (_, kv) = record[..length - 1].split_once(' ').unwrap();
                        let (key, value) = kv.split_once('=').unwrap();
                        match key {
                            "path" => pax_path = Some(value.to_string()),
                            "linkpath" => pax_link = Some(value.to_string()),
                            other => panic!("unexpected PAX key {other}"),
                        }
                        rest = &rest[length..];
                    }
                }
                flag => {
                    let name = pax_path.take().unwrap_or_else(|| field(&h[..100]));
                    let link = pax_link.take().unwrap_or_else(|| field(&h[157..257]));
                    let kind = match flag {
                        b'0' => Kind::File { size: size as u64 },
                        b'5' => Kind::Dir,
                        b'2' => Kind::Symlink { target: link },
                        other => panic!("unexpected type {other}"),
                    };
                    out.push(Entry { name, mode: number(&h[100..108]) as u32, kind, data: body });
                }
            }
        }
    }

    fn archive(entries: &[(&str, u32, Kind, &[u8])]) -> Vec<u8> {
        let mut tar = TarWriter::new(Vec::new());
        for (name, mode, kind, data) in entries {
            let mut data: &[u8] = data;
            tar.append(name, *mode, kind, Some(&mut data)).unwrap();
        }
        tar.finish().unwrap()
    }

    #[test]
    fn round_trips_files_dirs_symlinks_and_long_names() {
        let long_dir = "d".repeat(120);
        let long_file = format!("{long_dir}/{}", "é".repeat(60));
        let long_link = "t".repeat(150);
        let entries: Vec<(&str, u32, Kind, &[u8])> = vec![
            ("Dockerfile", 0o644, Kind::File { size: 5 }, b"FROM\n"),
            ("bin", 0o755, Kind::Dir, b""),
            ("bin/run.sh", 0o755, Kind::File { size: 513 }, &[b'x'; 513]),
            ("bin/sh", 0o777, Kind::Symlink { target: "busybox".to_string() }, b""),
            (&long_dir, 0o700, Kind::Dir, b""),
            (&long_file, 0o600, Kind::File { size: 0 }, b""),
            ("long-link", 0o777, Kind::Symlink { target: long_link.clone() }, b""),
        ];
        let data = archive(&entries);
        let read = read_archive(&data);
        assert_eq!(read.len(), entries.len());
        for (got, (name, mode, kind, content)) in read.iter().zip(&entries) {
            let name = if *kind == Kind::Dir { format!("{name}/") } else { name.to_string() };
            assert_eq!(got.name, name);
            assert_eq!(got.mode, *mode);
            assert_eq!(&got.kind, kind);
            assert_eq!(got.data, *content);
        }
        // Every entry's estimate is at least what it takes.
        let estimate: u64 = entries.iter().map(|(n, _, k, _)| entry_size(n, k)).sum::<u64>() + 2 * BLOCK as u64;
        assert!(estimate >= data.len() as u64, "{estimate} < {}", data.len());
    }

    #[test]
    fn the_system_tar_reads_it() {
        let long_name = format!("{}/file.txt", "n".repeat(150));
        let data = archive(&[
            ("a.txt", 0o640, Kind::File { size: 3 }, b"abc"),
            ("dir", 0o750, Kind::Dir, b""),
            ("dir/link", 0o777, Kind::Symlink { target: "../a.txt".to_string() }, b""),
            (&long_name, 0o644, Kind::File { size: 1 }, b"z"),
        ]);
        let mut child = std::process::Command::new("tar")
            .args(["-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tar runs");
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let output = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "tar: {}", String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(lines[0].starts_with("-rw-r----- 0/0") && lines[0].ends_with(" a.txt"), "{listing}");
        assert!(lines[1].starts_with("drwxr-x--- 0/0") && lines[1].ends_with(" dir/"), "{listing}");
        assert!(lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with(" dir/link -> ../a.txt"), "{listing}");
        assert!(lines[3].ends_with(&long_name), "{listing}");
    }

    #[test]
    fn a_file_that_changes_size_is_an_error() {
        let mut tar = TarWriter::new(Vec::new());
        let mut short: &[u8] = b"ab";
        assert!(tar.append("f", 0o644, &Kind::File { size: 3 }, Some(&mut short)).is_err());
        let mut tar = TarWriter::new(Vec::new());
        let mut long: &[u8] = b"abcd";
        assert!(tar.append("f", 0o644, &Kind::File { size: 3 }, Some(&mut long)).is_err());
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("path", "a"), b"9 path=a\n");
        assert_eq!(pax_record("path", &"x".repeat(91)).len(), 101);
        for n in [1, 80, 89, 90, 91, 95, 996, 1000] {
            let record = pax_record("path", &"x".repeat(n));
            let text = String::from_utf8(record.clone()).unwrap();
            let (length, _) = text.split_once(' ').unwrap();
            assert_eq!(length.parse::<usize>().unwrap(), record.len(), "{n}");
        }
    }
}

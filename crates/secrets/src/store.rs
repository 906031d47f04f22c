use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Error, Secret, fill_random, now_unix};

const FORMAT: &str = "tug-secrets";
const FORMAT_VERSION: u32 = 1;
const CIPHER: &str = "xchacha20poly1305";
/// Authenticated with every ciphertext, so a ciphertext only decrypts as this
/// format and version of the store.
const ASSOCIATED_DATA: &[u8] = b"tug-secrets v1";
const KEY_ID_CONTEXT: &[u8] = b"tug-secrets key id";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Far more than a key file needs: a bound so a wrong file is not read whole.
const KEY_FILE_MAX: u64 = 1024;

type Key = Zeroizing<[u8; KEY_LEN]>;

/// How a secret came to be: decides, for example, whether tug may regenerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Generated,
    Set,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Set => "set",
        }
    }
}

/// What `tug secrets list` shows: never the value.
#[derive(Clone, Debug)]
pub struct EntryInfo {
    pub name: String,
    pub origin: Origin,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
    /// 1 when first stored, +1 on each replacement.
    pub version: u32,
}

/// One entry of the decrypted store, value included.
#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(with = "secret_as_string")]
    value: Secret,
    origin: Origin,
    created_at: u64,
    updated_at: u64,
    version: u32,
}

/// Secret deliberately implements no serde traits, so that it cannot end up in
/// some other serialized structure by accident; only the encrypted payload
/// writes it out.
mod secret_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Secret;

    pub(super) fn serialize<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// The plaintext, which only ever exists in memory. An object rather than a
/// bare map leaves room for more fields later.
#[derive(Serialize, Deserialize)]
struct Contents<M> {
    entries: M,
}

/// The store file as it is on disk.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    cipher: String,
    key_id: String,
    nonce: String,
    ciphertext: String,
}

enum KeySource {
    Env,
    File(PathBuf),
}

/// The decrypted secrets of one stack, with the key to save them again.
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    key: Key,
    key_source: KeySource,
    entries: BTreeMap<String, Entry>,
}

impl Store {
    pub const FILE: &'static str = "secrets.enc";
    pub const KEY_FILE: &'static str = "secrets.key";

    /// Opens without ever creating anything. Ok(None) when there is neither a store file nor a key (so nothing is stored yet).
    /// `env_key` is the value of TUG_SECRETS_KEY if set (it takes precedence over the key file).
    pub fn open(state_dir: &Path, env_key: Option<&str>) -> Result<Option<Store>, Error> {
        let path = state_dir.join(Self::FILE);
        let key_path = state_dir.join(Self::KEY_FILE);
        // Checked before anything else so that a mistyped key is reported even
        // when nothing is stored yet.
        let env_key = env_key.map(parse_env_key).transpose()?;
        let sealed = read_if_exists(&path)?;
        let (key, key_source) = match env_key {
            Some(key) => (key, KeySource::Env),
            None => match read_key_file(&key_path)? {
                Some(key) => (key, KeySource::File(key_path)),
                None if sealed.is_some() => {
                    return Err(Error::KeyMissing { store: path, key: key_path });
                }
                None => return Ok(None),
            },
        };
        let mut store = Store { dir: state_dir.to_path_buf(), path, key, key_source, entries: BTreeMap::new() };
        if let Some(sealed) = sealed {
            store.entries = store.unseal(&sealed)?;
        }
        Ok(Some(store))
    }

    /// Opens, or creates an empty store: creates state_dir (mode 0700) if missing and, when no key is given by env and no key file exists AND no store file exists, a fresh random 32-byte key in the key file (mode 0600, created with O_EXCL). Never creates a new key when a store file already exists (that would orphan it): that is Error::KeyMissing.
    pub fn open_or_create(state_dir: &Path, env_key: Option<&str>) -> Result<Store, Error> {
        create_private_dir(state_dir)?;
        if let Some(store) = Self::open(state_dir, env_key)? {
            return Ok(store);
        }
        // open() gives None only when there is no env key, no key file and no
        // store file: a new key cannot orphan anything.
        let key_path = state_dir.join(Self::KEY_FILE);
        let mut key = Key::default();
        fill_random(&mut key[..])?;
        let mut contents = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
        push_hex(&mut contents, &key[..]);
        contents.push('\n');
        match write_new_file(&key_path, contents.as_bytes()) {
            Ok(()) => {}
            // Another tug created the key since open() looked: use that one, as
            // the store it saves will be encrypted with it.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                return Self::open(state_dir, env_key)?.ok_or(Error::Io { path: key_path, action: "create", source });
            }
            Err(e) => return Err(e),
        }
        // The key must be durable before any store encrypted with it can be.
        sync_dir(state_dir)?;
        Ok(Store {
            dir: state_dir.to_path_buf(),
            path: state_dir.join(Self::FILE),
            key,
            key_source: KeySource::File(key_path),
            entries: BTreeMap::new(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.entries.get(name).map(|entry| &entry.value)
    }

    pub fn info(&self, name: &str) -> Option<EntryInfo> {
        self.entries.get_key_value(name).map(|(name, entry)| entry_info(name, entry))
    }

    /// Sorted by name.
    pub fn list(&self) -> Vec<EntryInfo> {
        self.entries.iter().map(|(name, entry)| entry_info(name, entry)).collect()
    }

    /// Inserts or replaces; sets updated_at (and created_at on first insert) to now, bumps version on replace.
    pub fn insert(&mut self, name: &str, value: Secret, origin: Origin) {
        let now = now_unix();
        match self.entries.get_mut(name) {
            Some(entry) => {
                entry.value = value;
                entry.origin = origin;
                entry.updated_at = now;
                entry.version = entry.version.saturating_add(1);
            }
            None => {
                let entry = Entry { value, origin, created_at: now, updated_at: now, version: 1 };
                self.entries.insert(name.to_owned(), entry);
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Atomic: encrypt, write to a temporary file in the same folder (mode 0600), fsync, rename over the store, fsync the folder.
    pub fn save(&self) -> Result<(), Error> {
        let sealed = self.seal()?;
        // The folder is missing when the store was opened with TUG_SECRETS_KEY
        // before anything was stored.
        create_private_dir(&self.dir)?;
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix)?;
        let tmp = self.dir.join(format!(".{}.{}.tmp", Self::FILE, hex(&suffix)));
        write_new_file(&tmp, &sealed)?;
        if let Err(source) = fs::rename(&tmp, &self.path) {
            // Best effort: the store itself is untouched either way.
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io { path: self.path.clone(), action: "replace", source });
        }
        sync_dir(&self.dir)
    }

    pub fn store_path(&self) -> &Path {
        &self.path
    }

    /// A key for `purpose` derived from the store's key (a backup archive's), so whoever holds
    /// the store's key can open what was sealed with it, and nothing else can.
    pub fn derived_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        crate::derive_key(purpose, &self.key[..])
    }

    /// Where the key came from, for messages: "TUG_SECRETS_KEY" or the key file path.
    pub fn key_description(&self) -> String {
        match &self.key_source {
            KeySource::Env => "TUG_SECRETS_KEY".to_owned(),
            KeySource::File(path) => path.display().to_string(),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }

    /// The store file's bytes: the entries, encrypted under a fresh nonce.
    fn seal(&self) -> Result<Vec<u8>, Error> {
        let encode_error = |action, source| Error::Io { path: self.path.clone(), action, source };
        let mut buf = PlaintextBuf::default();
        serde_json::to_writer(&mut buf, &Contents { entries: &self.entries })
            .map_err(|e| encode_error("serialize the secrets for", io::Error::other(e)))?;
        // Room for the tag, so that encrypting in place does not reallocate.
        buf.reserve(TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.cipher()
            .encrypt_in_place(&XNonce::from(nonce), ASSOCIATED_DATA, &mut *buf.0)
            .map_err(|e| encode_error("encrypt", io::Error::other(e)))?;
        let header = Header {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            cipher: CIPHER.to_owned(),
            key_id: key_id(&self.key),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(&*buf.0),
        };
        let mut sealed = serde_json::to_vec(&header).map_err(|e| encode_error("serialize", io::Error::other(e)))?;
        sealed.push(b'\n');
        Ok(sealed)
    }

    fn unseal(&self, sealed: &[u8]) -> Result<BTreeMap<String, Entry>, Error> {
        let damaged = |reason: String| Error::Damaged { store: self.path.clone(), reason };
        let header: Header = serde_json::from_slice(sealed)
            .map_err(|e| damaged(format!("it is not a tug secret store file ({})", describe_json_error(&e))))?;
        if header.format != FORMAT {
            return Err(damaged(format!("its format is {:?}, not {FORMAT:?}", header.format)));
        }
        if header.version != FORMAT_VERSION {
            return Err(damaged(format!(
                "it has format version {}, but this tug reads only version {FORMAT_VERSION}; use a newer tug",
                header.version
            )));
        }
        if header.cipher != CIPHER {
            return Err(damaged(format!("its cipher is {:?}, not {CIPHER:?}", header.cipher)));
        }
        let actual_id = key_id(&self.key);
        if header.key_id != actual_id {
            return Err(Error::WrongKey {
                store: self.path.clone(),
                key_description: self.key_description(),
                expected_id: header.key_id,
                actual_id,
            });
        }
        let nonce = STANDARD
            .decode(&header.nonce)
            .ok()
            .and_then(|bytes| <[u8; NONCE_LEN]>::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| damaged(format!("its nonce is not {NONCE_LEN} bytes of base64")))?;
        let mut buf = Zeroizing::new(
            STANDARD
                .decode(&header.ciphertext)
                .map_err(|_| damaged("its ciphertext is not valid base64".to_owned()))?,
        );
        self.cipher().decrypt_in_place(&XNonce::from(nonce), ASSOCIATED_DATA, &mut *buf).map_err(|_| {
            damaged("authentication failed although the key matches, so the file was modified or truncated".to_owned())
        })?;
        serde_json::from_slice::<Contents<BTreeMap<String, Entry>>>(&buf).map(|contents| contents.entries).map_err(
            |e| damaged(format!("its decrypted contents are not a list of secrets ({})", describe_json_error(&e))),
        )
    }
}

/// Shows where the store is and what it holds, never values or the key.
impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("key", &self.key_description())
            .field("entries", &self.list())
            .finish()
    }
}

fn entry_info(name: &str, entry: &Entry) -> EntryInfo {
    EntryInfo {
        name: name.to_owned(),
        origin: entry.origin,
        created_at: entry.created_at,
        updated_at: entry.updated_at,
        version: entry.version,
    }
}

/// Position and kind only: serde_json's own messages can quote the offending
/// value, which may be a secret.
fn describe_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected JSON content",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {}, column {}", e.line(), e.column())
}

/// First 8 bytes of SHA-256 over a fixed context and the key: tells keys apart
/// without revealing anything usable about them.
fn key_id(key: &Key) -> String {
    let mut hasher = Sha256::new();
    hasher.update(KEY_ID_CONTEXT);
    hasher.update(&key[..]);
    hex(&hasher.finalize()[..8])
}

fn parse_env_key(value: &str) -> Result<Key, Error> {
    let bad = |reason: &str| Error::BadEnvKey { reason: reason.to_owned() };
    let value = value.trim();
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Some(key) = decode_hex_key(value.as_bytes()) {
        return Ok(key);
    }
    let decoded = STANDARD_PAD_INDIFFERENT
        .decode(value)
        .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(value))
        .map(Zeroizing::new)
        .map_err(|_| bad("it is neither 64 hex characters nor base64"))?;
    if decoded.len() != KEY_LEN {
        return Err(Error::BadEnvKey { reason: format!("it is base64 of {} bytes, not {KEY_LEN}", decoded.len()) });
    }
    let mut key = Key::default();
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// Ok(None) when the key file does not exist.
fn read_key_file(path: &Path) -> Result<Option<Key>, Error> {
    let io_error = |action, source| Error::Io { path: path.to_path_buf(), action, source };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open", e)),
    };
    // Checked on the open file, so it is the mode of the file actually read.
    let mode = file.metadata().map_err(|e| io_error("inspect", e))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: format!(
                "it is accessible by group or others (mode {:03o}); run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            ),
        });
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN + 2));
    file.take(KEY_FILE_MAX + 1).read_to_end(&mut contents).map_err(|e| io_error("read", e))?;
    if contents.len() as u64 > KEY_FILE_MAX {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: "it is far too large to be a key; restore the right file".to_owned(),
        });
    }
    decode_hex_key(contents.trim_ascii()).map(Some).ok_or_else(|| Error::KeyFile {
        path: path.to_path_buf(),
        reason: format!(
            "it does not hold a key ({} hex characters and a newline); restore the right file",
            2 * KEY_LEN
        ),
    })
}

fn decode_hex_key(text: &[u8]) -> Option<Key> {
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = Key::default();
    for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(key)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Ok(None) when the file does not exist.
fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), action: "read", source }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        action: "create",
        source,
    })
}

/// Creates `path` (mode 0600, failing if it exists), writes `bytes` and fsyncs.
/// On failure after creating it, removes it again, so no partial file is left.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io_error = |action, source| Error::Io { path: path.to_path_buf(), action, source };
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| io_error("create", e))?;
    let written = file
        .write_all(bytes)
        .map_err(|e| io_error("write", e))
        .and_then(|()| file.sync_all().map_err(|e| io_error("sync", e)));
    if written.is_err() {
        // Best effort: we created it, so nothing of value is lost.
        let _ = fs::remove_file(path);
    }
    written
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        action: "sync",
        source,
    })
}

/// The plaintext buffer. serde_json grows its output by reallocating, and each
/// freed allocation would keep a copy of the secrets; this grows by hand and
/// zeroizes the old allocation (and itself, when dropped).
#[derive(Default)]
struct PlaintextBuf(Zeroizing<Vec<u8>>);

impl PlaintextBuf {
    fn reserve(&mut self, extra: usize) {
        let needed = self.0.len().saturating_add(extra);
        if needed > self.0.capacity() {
            let mut bigger = Vec::with_capacity(needed.max(2 * self.0.capacity()).max(256));
            bigger.extend_from_slice(&self.0);
            // Dropping the old Zeroizing wipes it.
            self.0 = Zeroizing::new(bigger);
        }
    }
}

impl Write for PlaintextBuf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.reserve(data.len());
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    use super::*;
    use crate::{Charset, generate};

    /// A fresh folder under the system temp dir, removed on drop. The state
    /// folder inside it is left for the code under test to create.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "tug-secrets-test-{test}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            TempDir(path)
        }

        fn state(&self) -> PathBuf {
            self.0.join("state")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn random_hex_key() -> String {
        generate(64, Charset::Hex).unwrap().expose().to_owned()
    }

    /// A saved store holding one secret, with a key file made by open_or_create.
    fn saved_store(state: &Path, name: &str, value: &str) {
        let mut store = Store::open_or_create(state, None).unwrap();
        store.insert(name, Secret::from(value), Origin::Set);
        store.save().unwrap();
    }

    fn header(state: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(state.join(Store::FILE)).unwrap()).unwrap()
    }

    #[test]
    fn open_creates_nothing() {
        let tmp = TempDir::new("open-creates-nothing");
        let state = tmp.state();
        assert!(Store::open(&state, None).unwrap().is_none());
        assert!(!state.exists());
        fs::create_dir(&state).unwrap();
        assert!(Store::open(&state, None).unwrap().is_none());
        assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
    }

    #[test]
    fn round_trip() {
        let tmp = TempDir::new("round-trip");
        let state = tmp.state();
        let mut store = Store::open_or_create(&state, None).unwrap();
        assert!(store.list().is_empty());
        assert_eq!(store.store_path(), state.join(Store::FILE));
        assert_eq!(store.key_description(), state.join(Store::KEY_FILE).display().to_string());
        let jwt = generate(48, Charset::Base64Url).unwrap();
        store.insert("jwt_key", jwt.clone(), Origin::Generated);
        store.insert("db_password", Secret::from("pa\"ss\\wörd\n"), Origin::Set);
        store.save().unwrap();

        let mut store = Store::open(&state, None).unwrap().unwrap();
        assert_eq!(store.get("jwt_key"), Some(&jwt));
        assert_eq!(store.get("db_password").unwrap().expose(), "pa\"ss\\wörd\n");
        assert_eq!(store.get("missing"), None);
        let names: Vec<String> = store.list().into_iter().map(|info| info.name).collect();
        assert_eq!(names, ["db_password", "jwt_key"]);
        let first = store.info("db_password").unwrap();
        assert_eq!((first.origin, first.version), (Origin::Set, 1));
        assert_eq!(first.created_at, first.updated_at);
        assert!(first.created_at >= 1_577_836_800);
        assert_eq!(store.info("jwt_key").unwrap().origin, Origin::Generated);

        store.insert("db_password", Secret::from("new"), Origin::Generated);
        assert!(store.remove("jwt_key"));
        assert!(!store.remove("jwt_key"));
        store.save().unwrap();

        let store = Store::open_or_create(&state, None).unwrap();
        let replaced = store.info("db_password").unwrap();
        assert_eq!(store.get("db_password").unwrap().expose(), "new");
        assert_eq!((replaced.origin, replaced.version), (Origin::Generated, 2));
        assert_eq!(replaced.created_at, first.created_at);
        assert!(replaced.updated_at >= first.updated_at);
        assert!(store.info("jwt_key").is_none());
        assert_eq!(store.list().len(), 1);
        assert_eq!(Origin::Generated.as_str(), "generated");
        assert_eq!(Origin::Set.as_str(), "set");
    }

    #[test]
    fn key_file_without_store_opens_empty() {
        let tmp = TempDir::new("key-without-store");
        let state = tmp.state();
        Store::open_or_create(&state, None).unwrap();
        let store = Store::open(&state, None).unwrap().unwrap();
        assert!(store.list().is_empty());
        assert!(!state.join(Store::FILE).exists());
    }

    #[test]
    fn plaintext_never_reaches_disk() {
        let tmp = TempDir::new("no-plaintext");
        let state = tmp.state();
        let value = "correct-horse-battery-staple-8d1f";
        let name = "very_distinctive_secret_name";
        saved_store(&state, name, value);
        let first_nonce = header(&state)["nonce"].clone();
        // A second save goes through the temporary-file path over an existing store.
        let mut store = Store::open(&state, None).unwrap().unwrap();
        store.insert("other", Secret::from(value), Origin::Set);
        store.save().unwrap();
        assert_ne!(header(&state)["nonce"], first_nonce, "nonce reused");

        let mut files: Vec<String> = Vec::new();
        for dir_entry in fs::read_dir(&state).unwrap() {
            let dir_entry = dir_entry.unwrap();
            let bytes = fs::read(dir_entry.path()).unwrap();
            for needle in [value, name] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{needle} found in {}",
                    dir_entry.path().display()
                );
            }
            files.push(dir_entry.file_name().to_string_lossy().into_owned());
        }
        files.sort();
        // No temporary file is left behind.
        assert_eq!(files, [Store::FILE, Store::KEY_FILE]);

        let header = header(&state);
        assert_eq!(header["format"], "tug-secrets");
        assert_eq!(header["version"], 1);
        assert_eq!(header["cipher"], "xchacha20poly1305");
        let key_id = header["key_id"].as_str().unwrap();
        assert_eq!(key_id.len(), 16);
        assert!(key_id.chars().all(|c| Charset::Hex.contains(c)));
        assert_eq!(STANDARD.decode(header["nonce"].as_str().unwrap()).unwrap().len(), NONCE_LEN);
    }

    #[test]
    fn file_modes_and_key_file_format() {
        let tmp = TempDir::new("modes");
        let state = tmp.state();
        saved_store(&state, "a", "b");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(Store::KEY_FILE)), 0o600);
        assert_eq!(mode(&state.join(Store::FILE)), 0o600);
        let key_text = fs::read_to_string(state.join(Store::KEY_FILE)).unwrap();
        let (hex_part, rest) = key_text.split_at(64);
        assert_eq!(rest, "\n");
        assert!(hex_part.chars().all(|c| Charset::Hex.contains(c)));
        let key = decode_hex_key(hex_part.as_bytes()).unwrap();
        assert_eq!(header(&state)["key_id"], key_id(&key));
    }

    #[test]
    fn key_file_open_to_others_is_refused() {
        let tmp = TempDir::new("key-perms");
        let state = tmp.state();
        saved_store(&state, "a", "b");
        let key_path = state.join(Store::KEY_FILE);
        for bad_mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&key_path, fs::Permissions::from_mode(bad_mode)).unwrap();
            let err = Store::open(&state, None).unwrap_err();
            assert!(matches!(&err, Error::KeyFile { path, .. } if *path == key_path), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("chmod 600 {}", key_path.display())), "{message}");
        }
        // The env key takes precedence, so the key file is not even looked at.
        let key_text = fs::read_to_string(&key_path).unwrap();
        assert!(Store::open(&state, Some(&key_text)).unwrap().is_some());
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Store::open(&state, None).unwrap().is_some());
    }

    #[test]
    fn garbage_key_file_is_refused_without_echo() {
        let tmp = TempDir::new("key-garbage");
        let state = tmp.state();
        fs::create_dir(&state).unwrap();
        let key_path = state.join(Store::KEY_FILE);
        let garbage = "zz-not-a-key-but-maybe-a-password";
        write_new_file(&key_path, garbage.as_bytes()).unwrap();
        let err = Store::open(&state, None).unwrap_err();
        assert!(matches!(&err, Error::KeyFile { path, .. } if *path == key_path), "{err:?}");
        assert!(!err.to_string().contains(garbage));
        // open_or_create must not replace it either.
        assert!(Store::open_or_create(&state, None).is_err());
        assert_eq!(fs::read_to_string(&key_path).unwrap(), garbage);
    }

    #[test]
    fn wrong_key_is_reported_and_store_left_alone() {
        let tmp = TempDir::new("wrong-key");
        let state = tmp.state();
        saved_store(&state, "db", "s3cret-value");
        let store_path = state.join(Store::FILE);
        let key_path = state.join(Store::KEY_FILE);
        let store_before = fs::read(&store_path).unwrap();
        let key_before = fs::read(&key_path).unwrap();
        let recorded_id = header(&state)["key_id"].as_str().unwrap().to_owned();

        let other = random_hex_key();
        for result in
            [Store::open(&state, Some(&other)).map(|_| ()), Store::open_or_create(&state, Some(&other)).map(|_| ())]
        {
            let err = result.unwrap_err();
            let message = err.to_string();
            match err {
                Error::WrongKey { store, key_description, expected_id, actual_id } => {
                    assert_eq!(store, store_path);
                    assert_eq!(key_description, "TUG_SECRETS_KEY");
                    assert_eq!(expected_id, recorded_id);
                    assert_ne!(actual_id, expected_id);
                }
                other => panic!("expected WrongKey, got {other:?}"),
            }
            assert!(message.contains(&recorded_id), "{message}");
            assert!(!message.contains(&other), "{message}");
        }
        assert_eq!(fs::read(&store_path).unwrap(), store_before);
        assert_eq!(fs::read(&key_path).unwrap(), key_before);
    }

    #[test]
    fn store_saved_with_env_key_refuses_the_key_file() {
        let tmp = TempDir::new("env-vs-file");
        let state = tmp.state();
        let env_key = random_hex_key();
        let mut store = Store::open_or_create(&state, Some(&env_key)).unwrap();
        // An env key means no key file is made.
        assert!(!state.join(Store::KEY_FILE).exists());
        store.insert("db", Secret::from("v"), Origin::Set);
        store.save().unwrap();
        let store_before = fs::read(state.join(Store::FILE)).unwrap();

        let key_path = state.join(Store::KEY_FILE);
        write_new_file(&key_path, format!("{}\n", random_hex_key()).as_bytes()).unwrap();
        match Store::open(&state, None).unwrap_err() {
            Error::WrongKey { key_description, .. } => assert_eq!(key_description, key_path.display().to_string()),
            other => panic!("expected WrongKey, got {other:?}"),
        }
        assert_eq!(fs::read(state.join(Store::FILE)).unwrap(), store_before);
        let store = Store::open(&state, Some(&env_key)).unwrap().unwrap();
        assert_eq!(store.get("db").unwrap().expose(), "v");
    }

    #[test]
    fn env_key_accepts_hex_and_every_base64_flavour() {
        let tmp = TempDir::new("env-formats");
        let state = tmp.state();
        // 0xfb 0xff 0xbf encodes as "+/+/" in standard base64 and "-_-_" in the
        // URL-safe alphabet, so both alphabets are really exercised.
        let key: Vec<u8> = (0..KEY_LEN).map(|i| [0xfb, 0xff, 0xbf][i % 3]).collect();
        let mut store = Store::open_or_create(&state, Some(&hex(&key))).unwrap();
        store.insert("x", Secret::from("y"), Origin::Set);
        store.save().unwrap();

        let forms = [
            hex(&key),
            hex(&key).to_uppercase(),
            format!("  {}\n", hex(&key)),
            STANDARD.encode(&key),
            STANDARD_NO_PAD.encode(&key),
            URL_SAFE.encode(&key),
            URL_SAFE_NO_PAD.encode(&key),
        ];
        assert!(forms[3].contains('+') && forms[5].contains('-'));
        for form in forms {
            let store = Store::open(&state, Some(&form)).unwrap_or_else(|e| panic!("{form:?}: {e}")).unwrap();
            assert_eq!(store.get("x").unwrap().expose(), "y");
        }
    }

    #[test]
    fn key_file_contents_work_as_env_key() {
        let tmp = TempDir::new("file-as-env");
        let state = tmp.state();
        saved_store(&state, "x", "y");
        let key_text = fs::read_to_string(state.join(Store::KEY_FILE)).unwrap();
        fs::remove_file(state.join(Store::KEY_FILE)).unwrap();
        let store = Store::open(&state, Some(&key_text)).unwrap().unwrap();
        assert_eq!(store.get("x").unwrap().expose(), "y");
        assert_eq!(store.key_description(), "TUG_SECRETS_KEY");
    }

    #[test]
    fn bad_env_keys_are_refused_without_echo() {
        let tmp = TempDir::new("bad-env");
        let state = tmp.state();
        let bad = [
            "".to_owned(),
            "   ".to_owned(),
            "short".to_owned(),
            "hunter2hunter2".to_owned(),
            "g".repeat(64),
            random_hex_key()[..62].to_owned(),
            format!("{}0", random_hex_key()),
            STANDARD.encode([7u8; 16]),
            STANDARD.encode([7u8; 33]),
            URL_SAFE_NO_PAD.encode([7u8; 31]),
            "not base64 at all!!".to_owned(),
        ];
        for value in &bad {
            for result in
                [Store::open(&state, Some(value)).map(|_| ()), Store::open_or_create(&state, Some(value)).map(|_| ())]
            {
                let err = result.unwrap_err();
                assert!(matches!(err, Error::BadEnvKey { .. }), "{value:?}: {err:?}");
                let message = err.to_string();
                assert!(message.contains("64 hex characters"), "{message}");
                assert!(message.contains("32 bytes"), "{message}");
                if !value.trim().is_empty() {
                    assert!(!message.contains(value.as_str()), "{message}");
                    assert!(!format!("{err:?}").contains(value.as_str()));
                }
            }
        }
        // A rejected env key never leads to a key file being made.
        assert!(!state.join(Store::KEY_FILE).exists());
    }

    #[test]
    fn flipped_ciphertext_byte_is_damage() {
        let tmp = TempDir::new("damaged");
        let state = tmp.state();
        saved_store(&state, "db", "s3cret-value");
        let store_path = state.join(Store::FILE);
        let key_before = fs::read(state.join(Store::KEY_FILE)).unwrap();

        let mut header = header(&state);
        let mut ciphertext = STANDARD.decode(header["ciphertext"].as_str().unwrap()).unwrap();
        ciphertext[3] ^= 0x01;
        header["ciphertext"] = STANDARD.encode(&ciphertext).into();
        let tampered = serde_json::to_vec(&header).unwrap();
        fs::write(&store_path, &tampered).unwrap();

        for result in [Store::open(&state, None).map(|_| ()), Store::open_or_create(&state, None).map(|_| ())] {
            match result.unwrap_err() {
                Error::Damaged { store, reason } => {
                    assert_eq!(store, store_path);
                    assert!(reason.contains("authentication failed"), "{reason}");
                }
                other => panic!("expected Damaged, got {other:?}"),
            }
        }
        assert_eq!(fs::read(&store_path).unwrap(), tampered);
        assert_eq!(fs::read(state.join(Store::KEY_FILE)).unwrap(), key_before);
    }

    #[test]
    fn malformed_store_files_are_damage() {
        let tmp = TempDir::new("malformed");
        let state = tmp.state();
        saved_store(&state, "db", "s3cret-value");
        let store_path = state.join(Store::FILE);
        let good = fs::read(&store_path).unwrap();
        let mut newer = header(&state);
        newer["version"] = 2.into();
        let mut short_nonce = header(&state);
        short_nonce["nonce"] = STANDARD.encode([0u8; 12]).into();
        let cases: [(Vec<u8>, &str); 5] = [
            (good[..good.len() / 2].to_vec(), "truncated JSON"),
            (b"hello".to_vec(), "invalid JSON"),
            (b"{}".to_vec(), "unexpected JSON content"),
            (serde_json::to_vec(&newer).unwrap(), "use a newer tug"),
            (serde_json::to_vec(&short_nonce).unwrap(), "nonce"),
        ];
        for (contents, expected) in cases {
            fs::write(&store_path, &contents).unwrap();
            match Store::open(&state, None).unwrap_err() {
                Error::Damaged { reason, .. } => assert!(reason.contains(expected), "{reason}"),
                other => panic!("expected Damaged, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_key_is_not_replaced() {
        let tmp = TempDir::new("key-missing");
        let state = tmp.state();
        saved_store(&state, "db", "s3cret-value");
        let store_path = state.join(Store::FILE);
        let key_path = state.join(Store::KEY_FILE);
        let store_before = fs::read(&store_path).unwrap();
        fs::remove_file(&key_path).unwrap();

        for result in [Store::open(&state, None).map(|_| ()), Store::open_or_create(&state, None).map(|_| ())] {
            let err = result.unwrap_err();
            let message = err.to_string();
            match err {
                Error::KeyMissing { store, key } => {
                    assert_eq!((store, key), (store_path.clone(), key_path.clone()));
                }
                other => panic!("expected KeyMissing, got {other:?}"),
            }
            assert!(message.contains(&store_path.display().to_string()));
            assert!(message.contains(&key_path.display().to_string()));
            assert!(message.contains("TUG_SECRETS_KEY"));
        }
        assert!(!key_path.exists(), "a new key would orphan the store");
        assert_eq!(fs::read(&store_path).unwrap(), store_before);
    }

    #[test]
    fn failed_save_keeps_no_temporary_file() {
        let tmp = TempDir::new("failed-save");
        let state = tmp.state();
        let mut store = Store::open_or_create(&state, None).unwrap();
        store.insert("db", Secret::from("s3cret-value"), Origin::Set);
        // A non-empty folder where the store file goes makes the rename fail.
        fs::create_dir_all(state.join(Store::FILE).join("occupied")).unwrap();
        match store.save().unwrap_err() {
            Error::Io { path, action, .. } => {
                assert_eq!(path, state.join(Store::FILE));
                assert_eq!(action, "replace");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        let mut names: Vec<_> =
            fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, [Store::FILE, Store::KEY_FILE]);
    }

    #[test]
    fn debug_output_shows_no_value_or_key() {
        #[derive(Debug)]
        #[expect(dead_code, reason = "the fields are only read through Debug, which is the point")]
        struct Deployment {
            store: Store,
            password: Secret,
        }
        let tmp = TempDir::new("debug");
        let state = tmp.state();
        let value = "s3cret-value-in-debug";
        let mut store = Store::open_or_create(&state, None).unwrap();
        store.insert("db_password", Secret::from(value), Origin::Set);
        let deployment = Deployment { store, password: Secret::from(value) };
        let key_text = fs::read_to_string(state.join(Store::KEY_FILE)).unwrap();
        for shown in [format!("{deployment:?}"), format!("{deployment:#?}")] {
            assert!(!shown.contains(value), "{shown}");
            assert!(!shown.contains(key_text.trim()), "{shown}");
            assert!(shown.contains("********"), "{shown}");
            assert!(shown.contains("db_password"), "{shown}");
        }
    }
}

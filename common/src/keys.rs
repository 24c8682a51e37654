//! Per-datastore keys, wrapped by a master key.
//!
//! Every datastore has two secret keys, the [`FrameKeys`] its frame codec
//! needs: the *data key* (AES-256-GCM-SIV, encrypts frame bodies) and the
//! *dedupe key* (keyed BLAKE3, fingerprints blocks). They are generated from
//! the operating system's random source the first time a datastore is used
//! and kept in a key file, `<dir>/<datastore>.key`, each wrapped (encrypted)
//! by a key derived from the host's [`MasterKey`]. Without the master key the
//! file is useless; with the wrong one, or with a file moved from another
//! datastore, loading fails with a typed [`KeyError`] and never yields keys.
//!
//! # Master key
//!
//! 32 bytes, from one of two sources ([`MasterKey::from_env_or_file`]):
//!
//! - a **file**, which holds either exactly 32 raw bytes, or 64 hexadecimal
//!   digits (either case) optionally surrounded by ASCII whitespace such as a
//!   trailing newline. A file of exactly 32 bytes is always read as raw
//!   bytes; any other length is read as hex. The file must be a regular file
//!   that neither group nor others can access (mode `0600` or stricter).
//! - the **environment variable** [`MASTER_KEY_ENV`] (`STRATA_MASTER_KEY`),
//!   64 hexadecimal digits, surrounding whitespace ignored.
//!
//! The master key itself never encrypts anything: two independent keys are
//! derived from it with BLAKE3's key derivation mode, one that wraps the
//! datastore keys ([`WRAP_CONTEXT`]) and one whose first 16 bytes are stored
//! in the key file as a *check value* ([`CHECK_CONTEXT`]), so that a wrong
//! master key is told apart from a damaged or moved file.
//!
//! # Key file layout (version 1)
//!
//! A binary file of exactly [`KEY_FILE_LEN`] (160) bytes, mode `0600`:
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! |      0 |    4 | magic `"STKY"` (`53 54 4b 59`)                                 |
//! |      4 |    1 | version, `1`                                                   |
//! |      5 |    3 | reserved, zero                                                 |
//! |      8 |   16 | master key check: first 16 bytes of `derive_key(CHECK_CONTEXT, master)` |
//! |     24 |   12 | data key nonce (random)                                        |
//! |     36 |   32 | data key, AES-256-GCM-SIV ciphertext                           |
//! |     68 |   16 | data key, GCM-SIV tag                                          |
//! |     84 |   12 | dedupe key nonce (random)                                      |
//! |     96 |   32 | dedupe key, AES-256-GCM-SIV ciphertext                         |
//! |    128 |   16 | dedupe key, GCM-SIV tag                                        |
//! |    144 |   16 | first 16 bytes of the BLAKE3 hash of bytes `[0, 144)`          |
//!
//! Both keys are wrapped under `derive_key(WRAP_CONTEXT, master)`. The
//! associated data of each wrap is bytes `[0, 24)` of the file, then one byte
//! naming the key (`'D'` data, `'F'` dedupe/fingerprint), then the datastore
//! name in UTF-8: a key file only opens under the datastore name it was made
//! for, and the two wrapped keys cannot be swapped.
//!
//! Loading checks, in order: the file is a regular file with no group or
//! other permission bits; magic; version; length; the trailing checksum
//! ([`KeyError::Corrupt`] for any of these); reserved bytes; the master key
//! check ([`KeyError::WrongMasterKey`]); the two tags
//! ([`KeyError::WrongDatastore`]: the file is intact and the master key
//! right, so it was made for another datastore or forged).
//!
//! # Creation
//!
//! A new file is written to a temporary file in the same directory, created
//! with mode `0600` (never widened later), written and fsynced, then
//! hard-linked to its final name and unlinked, and the directory is fsynced.
//! Linking, unlike renaming, never replaces an existing file: if two
//! processes create the same datastore's keys at once, one wins and the
//! other loads the winner's keys. The directory is created with mode `0700`
//! if missing.
//!
//! Key material is never printed: [`MasterKey`] and [`FrameKeys`] redact
//! their `Debug`, no error carries key bytes, and the master key and the
//! intermediate buffers here are zeroed when dropped.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::frame::FrameKeys;
use crate::siv::{SivCipher, SivError, NONCE_LEN, TAG_LEN};

/// The environment variable that may hold the master key, as 64 hex digits.
pub const MASTER_KEY_ENV: &str = "STRATA_MASTER_KEY";
/// Length of the master key and of each datastore key.
pub const KEY_LEN: usize = 32;
/// BLAKE3 key-derivation context of the key that wraps datastore keys.
pub const WRAP_CONTEXT: &str = "strata 2025 key file v1 wrapping key";
/// BLAKE3 key-derivation context of the master key check value.
pub const CHECK_CONTEXT: &str = "strata 2025 key file v1 master key check";
/// Magic bytes at the start of every key file.
pub const KEY_FILE_MAGIC: [u8; 4] = *b"STKY";
/// The key file format version this module writes and reads.
pub const KEY_FILE_VERSION: u8 = 1;
/// Length of a version 1 key file.
pub const KEY_FILE_LEN: usize = 160;
/// Longest datastore name accepted.
pub const MAX_DATASTORE_NAME_LEN: usize = 128;

const CHECK_OFF: usize = 8;
const CHECK_LEN: usize = 16;
/// Bytes `[0, AAD_PREFIX_LEN)` begin the associated data of both wraps.
const AAD_PREFIX_LEN: usize = CHECK_OFF + CHECK_LEN;
/// One wrapped key: nonce, ciphertext, tag.
const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const DATA_OFF: usize = AAD_PREFIX_LEN;
const DEDUPE_OFF: usize = DATA_OFF + WRAPPED_LEN;
const SUM_OFF: usize = DEDUPE_OFF + WRAPPED_LEN;
const SUM_LEN: usize = 16;
const KIND_DATA: u8 = b'D';
const KIND_DEDUPE: u8 = b'F';

const _: () = assert!(SUM_OFF + SUM_LEN == KEY_FILE_LEN);

/// Where a master key came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file.
    File(PathBuf),
    /// The environment variable [`MASTER_KEY_ENV`].
    Env,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "master key file {}", p.display()),
            KeySource::Env => write!(f, "environment variable {MASTER_KEY_ENV}"),
        }
    }
}

/// What is wrong with a master key's text. Never includes key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterKeyProblem {
    /// Empty, or only whitespace.
    #[error("it is empty")]
    Empty,
    /// Not 64 hex digits long (and, for a file, not 32 raw bytes either).
    #[error(
        "expected 64 hex digits (or, in a file, exactly 32 raw bytes), found {found} characters"
    )]
    WrongLength {
        /// Characters (bytes) found after trimming whitespace.
        found: usize,
    },
    /// A character that is not a hex digit.
    #[error("character {position} is not a hex digit")]
    NotHex {
        /// Zero-based position of the first bad character, after trimming.
        position: usize,
    },
    /// The environment variable is not valid Unicode.
    #[error("it is not valid UTF-8")]
    NotUnicode,
}

/// Why keys could not be loaded or created. No variant carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No master key file was configured and [`MASTER_KEY_ENV`] is unset.
    #[error("no master key: configure a master key file or set {MASTER_KEY_ENV} (64 hex digits)")]
    MissingMasterKey,
    /// The master key's text is malformed.
    #[error("bad master key in {from}: {problem}")]
    BadMasterKey {
        /// Where it came from.
        from: KeySource,
        /// What is wrong with it.
        problem: MasterKeyProblem,
    },
    /// A file or directory operation failed.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        /// What was being done, e.g. "read".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        error: io::Error,
    },
    /// A secret file can be accessed by group or others.
    #[error(
        "refusing {}: mode {mode:04o} lets group or others access it; chmod 600 it",
        path.display()
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file is a symlink, directory, device or other non-regular file.
    #[error("refusing {}: not a regular file", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// The datastore has no key file (from [`DatastoreKeys::load`]).
    #[error("no key file {} for this datastore", path.display())]
    KeyFileMissing {
        /// The expected path.
        path: PathBuf,
    },
    /// A datastore name that cannot name a key file.
    #[error(
        "invalid datastore name {name:?}: use 1 to {MAX_DATASTORE_NAME_LEN} ASCII letters, digits, \
         '-', '_' or '.', not starting with '.'"
    )]
    InvalidDatastoreName {
        /// The name given.
        name: String,
    },
    /// The key file is damaged, truncated, or not a key file.
    #[error("key file {} is corrupt: {what}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// Which check failed.
        what: &'static str,
    },
    /// A key file version this build does not read.
    #[error("key file {} has version {found}; this build reads version {KEY_FILE_VERSION}", path.display())]
    UnsupportedVersion {
        /// The key file.
        path: PathBuf,
        /// The version byte found.
        found: u8,
    },
    /// The key file was made under a different master key.
    #[error("key file {} was made with a different master key", path.display())]
    WrongMasterKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is intact and the master key right, but it does not
    /// authenticate for this datastore: it was moved or copied from another
    /// datastore's name, or forged.
    #[error(
        "key file {} does not belong to datastore {datastore:?} (moved from another datastore, or forged)",
        path.display()
    )]
    WrongDatastore {
        /// The key file.
        path: PathBuf,
        /// The datastore it was opened for.
        datastore: String,
    },
    /// The operating system's random source failed.
    #[error("cannot get random bytes for new keys: {0}")]
    Random(getrandom::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |error| KeyError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// The host's master key, 32 bytes, zeroed on drop. `Debug` prints nothing of it.
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey { .. }")
    }
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self {
            key: Zeroizing::new(bytes),
        }
    }

    /// Loads the master key from `path` if given, else from the environment
    /// variable [`MASTER_KEY_ENV`]. An explicitly configured file wins over
    /// the environment. Neither: [`KeyError::MissingMasterKey`].
    pub fn from_env_or_file(path: Option<&Path>) -> Result<Self, KeyError> {
        match path {
            Some(p) => Self::from_file(p),
            None => Self::from_env_value(std::env::var_os(MASTER_KEY_ENV))?
                .ok_or(KeyError::MissingMasterKey),
        }
    }

    /// Loads the master key from the environment variable [`MASTER_KEY_ENV`];
    /// `Ok(None)` if it is unset.
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        Self::from_env_value(std::env::var_os(MASTER_KEY_ENV))
    }

    /// Parses the value of [`MASTER_KEY_ENV`] (`None`: unset) as 64 hex
    /// digits, surrounding whitespace ignored.
    pub fn from_env_value(value: Option<OsString>) -> Result<Option<Self>, KeyError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let value = Zeroizing::new(value.into_string().map_err(|os| {
            drop(Zeroizing::new(os.into_encoded_bytes()));
            KeyError::BadMasterKey {
                from: KeySource::Env,
                problem: MasterKeyProblem::NotUnicode,
            }
        })?);
        Self::from_hex(value.as_bytes())
            .map(Some)
            .map_err(|problem| KeyError::BadMasterKey {
                from: KeySource::Env,
                problem,
            })
    }

    /// Loads the master key from a file: exactly 32 raw bytes, or 64 hex
    /// digits with optional surrounding whitespace. The file must be a
    /// regular file with no group or other permissions.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = read_secret_file(path, 4096)?;
        if bytes.len() == KEY_LEN {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            key.copy_from_slice(&bytes);
            return Ok(Self { key });
        }
        Self::from_hex(&bytes).map_err(|problem| KeyError::BadMasterKey {
            from: KeySource::File(path.to_path_buf()),
            problem,
        })
    }

    /// Loads the master key file at `path`, first creating it with a fresh
    /// random key (32 raw bytes, mode 0600, in a 0700 directory) if there is
    /// none. For single-box use: a key kept beside the data guards against
    /// lost or returned drives, not against whoever can read the host.
    pub fn load_or_create_file(path: &Path) -> Result<Self, KeyError> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => return Self::from_file(path),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("create directory", dir))?;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut key[..]).map_err(KeyError::Random)?;
        match write_new_file(path, &key[..]) {
            // Another process created it first: its key is the key.
            Err(KeyError::Io { ref error, .. }) if error.kind() == io::ErrorKind::AlreadyExists => {
            }
            other => other?,
        }
        Self::from_file(path)
    }

    /// Parses 64 hex digits (either case), ignoring surrounding ASCII
    /// whitespace.
    pub fn from_hex(text: &[u8]) -> Result<Self, MasterKeyProblem> {
        let text = text.trim_ascii();
        if text.is_empty() {
            return Err(MasterKeyProblem::Empty);
        }
        if text.len() != 2 * KEY_LEN {
            return Err(MasterKeyProblem::WrongLength { found: text.len() });
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or(MasterKeyProblem::NotHex { position: 2 * i })?;
            let lo = hex_digit(pair[1]).ok_or(MasterKeyProblem::NotHex {
                position: 2 * i + 1,
            })?;
            key[i] = (hi << 4) | lo;
        }
        Ok(Self { key })
    }

    fn wrap_cipher(&self) -> SivCipher {
        let kek = Zeroizing::new(blake3::derive_key(WRAP_CONTEXT, &self.key[..]));
        SivCipher::new(&kek)
    }

    fn check_value(&self) -> [u8; CHECK_LEN] {
        let full = blake3::derive_key(CHECK_CONTEXT, &self.key[..]);
        let mut check = [0u8; CHECK_LEN];
        check.copy_from_slice(&full[..CHECK_LEN]);
        check
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Opens a secret file, refusing non-regular files and group/other access,
/// and reads at most `limit + 1` bytes of it.
fn read_secret_file(path: &Path, limit: u64) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(io_err("open", path))?;
    // Check the file actually opened, not the path, against a swap in between.
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN + 1));
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    Ok(bytes)
}

/// Loads and creates datastore key files. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct DatastoreKeys;

impl DatastoreKeys {
    /// The key file path of `datastore` under `dir`: `<dir>/<datastore>.key`.
    pub fn path(dir: &Path, datastore: &str) -> Result<PathBuf, KeyError> {
        validate_datastore_name(datastore)?;
        Ok(dir.join(format!("{datastore}.key")))
    }

    /// Returns the datastore's keys, creating its key file with fresh random
    /// keys if it does not exist yet.
    pub fn load_or_create(
        dir: &Path,
        datastore: &str,
        master: &MasterKey,
    ) -> Result<FrameKeys, KeyError> {
        match Self::load(dir, datastore, master) {
            Err(KeyError::KeyFileMissing { .. }) => Self::create(dir, datastore, master),
            other => other,
        }
    }

    /// Returns the datastore's keys from its existing key file;
    /// [`KeyError::KeyFileMissing`] if there is none.
    pub fn load(dir: &Path, datastore: &str, master: &MasterKey) -> Result<FrameKeys, KeyError> {
        let path = Self::path(dir, datastore)?;
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyError::KeyFileMissing { path })
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
            Ok(_) => {}
        }
        let bytes = read_secret_file(&path, KEY_FILE_LEN as u64)?;
        decode_key_file(&bytes, datastore, master, &path)
    }

    /// The bytes of the datastore's existing key file, checked to open
    /// with `master`; `None` if there is none.
    pub fn read_file(
        dir: &Path,
        datastore: &str,
        master: &MasterKey,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        let path = Self::path(dir, datastore)?;
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", &path)(e)),
            Ok(_) => {}
        }
        let bytes = read_secret_file(&path, KEY_FILE_LEN as u64)?;
        decode_key_file(&bytes, datastore, master, &path)?;
        Ok(Some(bytes))
    }

    /// A new key file for `datastore`: fresh random keys wrapped by
    /// `master`. `path` is only for errors.
    pub fn new_file(
        datastore: &str,
        master: &MasterKey,
        path: &Path,
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyError> {
        validate_datastore_name(datastore)?;
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        let mut dedupe_key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut data_key[..]).map_err(KeyError::Random)?;
        getrandom::fill(&mut dedupe_key[..]).map_err(KeyError::Random)?;
        let mut nonces = [0u8; 2 * NONCE_LEN];
        getrandom::fill(&mut nonces).map_err(KeyError::Random)?;
        encode_key_file(&data_key, &dedupe_key, &nonces, datastore, master, path)
            .map(Zeroizing::new)
    }

    /// Generates fresh keys and writes the key file; if another process
    /// wrote one first, loads that instead.
    fn create(dir: &Path, datastore: &str, master: &MasterKey) -> Result<FrameKeys, KeyError> {
        let path = Self::path(dir, datastore)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        let bytes = Self::new_file(datastore, master, &path)?;

        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(KeyError::Random)?;
        let tmp = dir.join(format!(
            ".{datastore}.key.tmp-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(tag)
        ));
        let result =
            write_new_file(&tmp, &bytes[..]).and_then(|()| match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io_err("link", &path)(e)),
            });
        // The temporary name goes in every case; a failure to remove it
        // leaves a stray file, not a wrong key, so it is not an error.
        let _ = fs::remove_file(&tmp);
        let created = result?;
        sync_dir(dir)?;
        if created {
            decode_key_file(&bytes[..], datastore, master, &path)
        } else {
            // Lost a race with another creator: its keys are the keys.
            Self::load(dir, datastore, master)
        }
    }
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Checks a datastore name: 1 to [`MAX_DATASTORE_NAME_LEN`] ASCII letters,
/// digits, `-`, `_` or `.`, not starting with `.`.
pub fn validate_datastore_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_DATASTORE_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidDatastoreName {
            name: name.to_string(),
        })
    }
}

fn aad(prefix: &[u8], kind: u8, datastore: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(prefix.len() + 1 + datastore.len());
    aad.extend_from_slice(prefix);
    aad.push(kind);
    aad.extend_from_slice(datastore.as_bytes());
    aad
}

fn checksum(bytes: &[u8]) -> [u8; SUM_LEN] {
    let full = blake3::hash(bytes);
    let mut sum = [0u8; SUM_LEN];
    sum.copy_from_slice(&full.as_bytes()[..SUM_LEN]);
    sum
}

/// Builds a key file's bytes. `nonces` holds the data key's nonce, then the
/// dedupe key's; `path` is only for errors. Public for the fuzz targets;
/// key files are made by [`DatastoreKeys::load_or_create`], with fresh
/// random nonces.
pub fn encode_key_file(
    data_key: &[u8; KEY_LEN],
    dedupe_key: &[u8; KEY_LEN],
    nonces: &[u8; 2 * NONCE_LEN],
    datastore: &str,
    master: &MasterKey,
    path: &Path,
) -> Result<[u8; KEY_FILE_LEN], KeyError> {
    let mut out = [0u8; KEY_FILE_LEN];
    out[..4].copy_from_slice(&KEY_FILE_MAGIC);
    out[4] = KEY_FILE_VERSION;
    out[CHECK_OFF..AAD_PREFIX_LEN].copy_from_slice(&master.check_value());
    let cipher = master.wrap_cipher();
    let (prefix, rest) = out.split_at_mut(AAD_PREFIX_LEN);
    let (data_nonce, dedupe_nonce) = nonces.split_at(NONCE_LEN);
    let parts = [
        (KIND_DATA, data_key, data_nonce),
        (KIND_DEDUPE, dedupe_key, dedupe_nonce),
    ];
    let failed = || KeyError::Corrupt {
        path: path.to_path_buf(),
        what: "key wrapping failed",
    };
    for (i, (kind, key, nonce)) in parts.into_iter().enumerate() {
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| failed())?;
        let slot = &mut rest[i * WRAPPED_LEN..(i + 1) * WRAPPED_LEN];
        slot[..NONCE_LEN].copy_from_slice(nonce);
        let body = &mut slot[NONCE_LEN..NONCE_LEN + KEY_LEN];
        body.copy_from_slice(key);
        let tag = cipher
            .seal(nonce, &aad(prefix, kind, datastore), body)
            .map_err(|_| failed())?;
        slot[NONCE_LEN + KEY_LEN..].copy_from_slice(&tag);
    }
    let sum = checksum(&out[..SUM_OFF]);
    out[SUM_OFF..].copy_from_slice(&sum);
    Ok(out)
}

/// Parses and unwraps a key file's bytes; `path` is only for errors.
/// Never panics, whatever the bytes.
pub fn decode_key_file(
    bytes: &[u8],
    datastore: &str,
    master: &MasterKey,
    path: &Path,
) -> Result<FrameKeys, KeyError> {
    let corrupt = |what| KeyError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    if bytes.len() < 5 || bytes[..4] != KEY_FILE_MAGIC {
        return Err(corrupt("bad magic: not a Strata key file"));
    }
    if bytes[4] != KEY_FILE_VERSION {
        return Err(KeyError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: bytes[4],
        });
    }
    if bytes.len() != KEY_FILE_LEN {
        return Err(corrupt("wrong length (truncated or padded)"));
    }
    if checksum(&bytes[..SUM_OFF])[..] != bytes[SUM_OFF..] {
        return Err(corrupt("checksum mismatch (damaged)"));
    }
    if bytes[5..CHECK_OFF] != [0, 0, 0] {
        return Err(corrupt("reserved bytes are not zero"));
    }
    if master.check_value()[..] != bytes[CHECK_OFF..AAD_PREFIX_LEN] {
        return Err(KeyError::WrongMasterKey {
            path: path.to_path_buf(),
        });
    }
    let cipher = master.wrap_cipher();
    let prefix = &bytes[..AAD_PREFIX_LEN];
    let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
    let mut dedupe_key = Zeroizing::new([0u8; KEY_LEN]);
    for (off, kind, out) in [
        (DATA_OFF, KIND_DATA, &mut *data_key),
        (DEDUPE_OFF, KIND_DEDUPE, &mut *dedupe_key),
    ] {
        let slot = &bytes[off..off + WRAPPED_LEN];
        let (nonce, rest) = slot.split_at(NONCE_LEN);
        let (wrapped, tag) = rest.split_at(KEY_LEN);
        let unwrapped = match (
            <&[u8; NONCE_LEN]>::try_from(nonce),
            <&[u8; TAG_LEN]>::try_from(tag),
        ) {
            (Ok(nonce), Ok(tag)) => cipher.open(
                nonce,
                &aad(prefix, kind, datastore),
                wrapped,
                tag,
                &mut out[..],
            ),
            _ => Err(SivError),
        };
        if unwrapped.is_err() {
            return Err(KeyError::WrongDatastore {
                path: path.to_path_buf(),
                datastore: datastore.to_string(),
            });
        }
    }
    Ok(FrameKeys {
        data_key: *data_key,
        dedupe_key: *dedupe_key,
    })
}

#[cfg(test)]
mod tests;

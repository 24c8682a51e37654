//! Configuration of `strata-host`: its flash store and the vdisks it serves.
//!
//! A config file is TOML with an optional `[flash]` table, an optional
//! `[pool]` table (the pool node whose NVLOG makes writes durable) and one
//! `[[vdisk]]` table per vdisk. The command line accepts the same vdisk fields as a
//! compact spec, `name=d0,size=8G` or `name=s0,kind=raw,path=/img,size=8G`,
//! which is turned into the same TOML table and deserialized by the same
//! schema, so both forms accept exactly the same keys and values.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Largest number of virtqueues one vdisk may have.
pub const MAX_QUEUES: u16 = 16;
/// Where sockets go when a vdisk names none.
pub const DEFAULT_SOCKET_DIR: &str = "/run/strata";
/// Longest vdisk name accepted (the virtio serial shows the first 20 bytes).
pub const MAX_NAME_LEN: usize = 64;
/// Where the host keeps its flash store and keys when not told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/strata";

/// An error in a config file or a `--vdisk` spec, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file or the spec text.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("vdisk {vdisk:?}: {message}")]
    Invalid {
        /// The vdisk the value belongs to.
        vdisk: String,
        /// What is wrong.
        message: String,
    },
}

/// When the device tells the guest a write is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Writes complete once they are durable (the guest sees WCE=0).
    Writethrough,
    /// Writes complete once accepted; FLUSH makes them durable (WCE=1).
    #[default]
    Writeback,
}

/// How a vdisk stores its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VdiskKind {
    /// In the host's flash store: deduplicated, compressed, encrypted,
    /// checksummed.
    #[default]
    Strata,
    /// A plain image file or block device, byte for byte.
    Raw,
}

impl fmt::Display for VdiskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VdiskKind::Strata => "strata",
            VdiskKind::Raw => "raw",
        })
    }
}

/// One vdisk as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VdiskConfig {
    /// Name; also the virtio-blk serial number.
    pub name: String,
    /// How its blocks are stored.
    #[serde(default)]
    pub kind: VdiskKind,
    /// The image of a raw vdisk: a regular file or a block device.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Create the vdisk with this size if missing; if it exists, its size must match.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub size: Option<u64>,
    /// The vhost-user socket; `/run/strata/NAME.sock` when absent.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Number of virtqueues, each served by its own thread.
    #[serde(default = "default_queues")]
    pub queues: u16,
    /// Logical block size the guest sees: 512 or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Refuse writes (VIRTIO_BLK_F_RO).
    #[serde(default)]
    pub read_only: bool,
    /// Initial write cache mode; the guest may change it.
    #[serde(default)]
    pub cache: CacheMode,
}

fn default_queues() -> u16 {
    1
}

fn default_block_size() -> u32 {
    512
}

impl VdiskConfig {
    /// The socket path, defaulted from the name.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_SOCKET_DIR).join(format!("{}.sock", self.name)))
    }

    /// Parses a command-line spec: `name=d0,path=/img[,size=8G][,read-only]...`.
    ///
    /// A key without `=` means `true`. Keys are those of the config file.
    pub fn from_spec(spec: &str) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), spec_value(v.trim())),
                None => (item.trim(), toml::Value::Boolean(true)),
            };
            if table.insert(key.to_string(), value).is_some() {
                return Err(ConfigError::Syntax {
                    origin: format!("--vdisk {spec}"),
                    message: format!("key {key:?} given twice"),
                });
            }
        }
        let vdisk: VdiskConfig =
            table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: format!("--vdisk {spec}"),
                    message: e.message().to_string(),
                })?;
        vdisk.validate()?;
        Ok(vdisk)
    }

    /// Checks the values that the schema alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            vdisk: self.name.clone(),
            message,
        };
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_LEN
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(format!(
                "name must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
            )));
        }
        if !(1..=MAX_QUEUES).contains(&self.queues) {
            return Err(invalid(format!(
                "queues must be 1 to {MAX_QUEUES}, not {}",
                self.queues
            )));
        }
        if self.block_size != 512 && self.block_size != 4096 {
            return Err(invalid(format!(
                "block-size must be 512 or 4096, not {}",
                self.block_size
            )));
        }
        if let Some(size) = self.size {
            let unit = match self.kind {
                VdiskKind::Strata => 4096,
                VdiskKind::Raw => u64::from(self.block_size),
            };
            if size == 0 || size % unit != 0 {
                return Err(invalid(format!(
                    "size {size} must be a non-zero multiple of {unit} bytes"
                )));
            }
        }
        match (self.kind, &self.path) {
            (VdiskKind::Raw, None) => {
                return Err(invalid("a raw vdisk needs path=IMAGE".to_string()))
            }
            (VdiskKind::Strata, Some(_)) => {
                return Err(invalid(
                    "path= is for raw vdisks (add kind=raw); strata vdisks live in the flash store"
                        .to_string(),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// A spec value as TOML: integers and booleans typed, everything else a string.
fn spec_value(text: &str) -> toml::Value {
    if let Ok(n) = text.parse::<i64>() {
        toml::Value::Integer(n)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(text.to_string())
    }
}

/// Accepts a size as a byte count or a string with a binary suffix ("8G", "512M").
fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(text) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parses "4096", "64K", "8G", "1.5T" with powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| format!("bad size {text:?}: {e}"))
}

/// The host's flash store: where it is and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FlashSettings {
    /// The flash file or block device.
    #[serde(default = "default_flash_path")]
    pub path: PathBuf,
    /// Size of the flash file when it is created.
    #[serde(
        default = "default_flash_size",
        deserialize_with = "deserialize_size_required"
    )]
    pub size: u64,
    /// Bytes per segment, for a new store.
    #[serde(
        default = "default_segment_size",
        deserialize_with = "deserialize_size_required"
    )]
    pub segment_size: u64,
    /// Bytes of journal, for a new store.
    #[serde(
        default = "default_journal_size",
        deserialize_with = "deserialize_size_required"
    )]
    pub journal_size: u64,
    /// RAM for cached vdisk map nodes.
    #[serde(
        default = "default_map_cache",
        deserialize_with = "deserialize_size_required"
    )]
    pub map_cache: u64,
    /// The datastore name; its keys are `KEY-DIR/NAME.key`.
    #[serde(default = "default_datastore")]
    pub datastore: String,
    /// Directory of the datastore key files.
    #[serde(default = "default_key_dir")]
    pub key_dir: PathBuf,
    /// The master key file; absent: `STRATA_MASTER_KEY`, else
    /// `KEY-DIR/master.key`, created on first use.
    #[serde(default)]
    pub master_key: Option<PathBuf>,
    /// The control socket the status command talks to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
}

impl Default for FlashSettings {
    fn default() -> Self {
        FlashSettings {
            path: default_flash_path(),
            size: default_flash_size(),
            segment_size: default_segment_size(),
            journal_size: default_journal_size(),
            map_cache: default_map_cache(),
            datastore: default_datastore(),
            key_dir: default_key_dir(),
            master_key: None,
            control_socket: default_control_socket(),
        }
    }
}

fn default_flash_path() -> PathBuf {
    Path::new(DEFAULT_STATE_DIR).join("flash.img")
}

fn default_flash_size() -> u64 {
    16 << 30
}

fn default_segment_size() -> u64 {
    4 << 20
}

fn default_journal_size() -> u64 {
    128 << 20
}

fn default_map_cache() -> u64 {
    256 << 20
}

fn default_datastore() -> String {
    "default".to_string()
}

fn default_key_dir() -> PathBuf {
    Path::new(DEFAULT_STATE_DIR).join("keys")
}

fn default_control_socket() -> PathBuf {
    Path::new(DEFAULT_SOCKET_DIR).join("strata-host.ctl")
}

/// The `[pool]` table: where the pool node is and who this host is to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolSettings {
    /// The pool node's address, `IP:PORT`.
    pub address: std::net::SocketAddr,
    /// The cluster directory `strata init` made (CA, this host's certificate).
    #[serde(default = "default_cluster_dir")]
    pub cluster_dir: PathBuf,
    /// This host's name, as given to `strata host add`.
    #[serde(default = "default_host_name")]
    pub host_name: String,
    /// Seconds between destages when the NVLOG holds anything (a destage
    /// also starts early when the NVLOG passes a quarter of its quota).
    #[serde(default = "default_destage_interval")]
    pub destage_interval_secs: u64,
}

impl PoolSettings {
    /// Settings for the pool at `address` with the default cluster directory
    /// and host name.
    pub fn new(address: std::net::SocketAddr) -> PoolSettings {
        PoolSettings {
            address,
            cluster_dir: default_cluster_dir(),
            host_name: default_host_name(),
            destage_interval_secs: default_destage_interval(),
        }
    }
}

fn default_destage_interval() -> u64 {
    30
}

/// Where `strata init` puts the cluster's certificates by default.
pub const DEFAULT_CLUSTER_DIR: &str = "/var/lib/strata/cluster";
/// The host name a one-box setup uses.
pub const DEFAULT_HOST_NAME: &str = "host1";

fn default_cluster_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CLUSTER_DIR)
}

fn default_host_name() -> String {
    DEFAULT_HOST_NAME.to_string()
}

fn deserialize_size_required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    deserialize_size(d)?.ok_or_else(|| serde::de::Error::custom("a size is required"))
}

/// The whole configuration of one `strata-host`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The flash store of `strata` vdisks.
    #[serde(default)]
    pub flash: FlashSettings,
    /// The pool node `strata` vdisks write through; none for a standalone
    /// host.
    #[serde(default)]
    pub pool: Option<PoolSettings>,
    /// The vdisks to serve.
    #[serde(default)]
    pub vdisk: Vec<VdiskConfig>,
}

impl HostConfig {
    /// Reads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: HostConfig = toml::from_str(text).map_err(|e| {
            // One line: "file:line:column: message".
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let line = text[..at].matches('\n').count() + 1;
            let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
            ConfigError::Syntax {
                origin: format!("{origin}:{line}:{column}"),
                message: e.message().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every vdisk and that names, images and sockets are unique.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        let mut sockets = HashSet::new();
        for vdisk in &self.vdisk {
            vdisk.validate()?;
            let dup = |what: &str| ConfigError::Invalid {
                vdisk: vdisk.name.clone(),
                message: format!("{what} is used by another vdisk"),
            };
            if !names.insert(vdisk.name.clone()) {
                return Err(dup("the name"));
            }
            if let Some(path) = &vdisk.path {
                if !paths.insert(path.clone()) || *path == self.flash.path {
                    return Err(dup("the image path"));
                }
            }
            if !sockets.insert(vdisk.socket_path()) {
                return Err(dup("the socket path"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheMode::Writethrough => "writethrough",
            CacheMode::Writeback => "writeback",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_with_all_keys() {
        let v = VdiskConfig::from_spec(
            "name=d0,kind=raw,path=/tmp/d0.img,size=64M,socket=/tmp/d0.sock,queues=2,block-size=4096,read-only,cache=writethrough",
        )
        .expect("valid spec");
        assert_eq!(v.name, "d0");
        assert_eq!(v.kind, VdiskKind::Raw);
        assert_eq!(v.path, Some(PathBuf::from("/tmp/d0.img")));
        assert_eq!(v.size, Some(64 << 20));
        assert_eq!(v.socket_path(), PathBuf::from("/tmp/d0.sock"));
        assert_eq!(v.queues, 2);
        assert_eq!(v.block_size, 4096);
        assert!(v.read_only);
        assert_eq!(v.cache, CacheMode::Writethrough);
    }

    #[test]
    fn spec_defaults() {
        let v = VdiskConfig::from_spec("name=a").expect("valid spec");
        assert_eq!(v.kind, VdiskKind::Strata);
        assert_eq!(v.path, None);
        assert_eq!(v.size, None);
        assert_eq!(v.queues, 1);
        assert_eq!(v.block_size, 512);
        assert!(!v.read_only);
        assert_eq!(v.cache, CacheMode::Writeback);
        assert_eq!(v.socket_path(), PathBuf::from("/run/strata/a.sock"));
    }

    #[test]
    fn spec_errors_name_the_problem() {
        let cases = [
            ("size=1G", "name"),
            ("name=a,kind=raw", "needs path"),
            ("name=a,path=/x", "kind=raw"),
            ("name=a,kind=tape", "kind"),
            ("name=a,bogus=1", "bogus"),
            ("name=a,queues=0", "queues"),
            ("name=a,queues=17", "queues"),
            ("name=a,block-size=1024", "block-size"),
            ("name=a,kind=raw,path=/x,size=1000", "multiple"),
            ("name=a,size=512", "multiple of 4096"),
            ("name=a,size=lots", "size"),
            ("name=a b", "name must"),
            ("name=a,name=b", "twice"),
            ("name=a,cache=sometimes", "cache"),
        ];
        for (spec, needle) in cases {
            let err = VdiskConfig::from_spec(spec).expect_err(spec).to_string();
            assert!(err.contains(needle), "{spec}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn toml_file_and_duplicates() {
        let ok = r#"
            [flash]
            path = "/f.img"
            size = "2G"
            [[vdisk]]
            name = "a"
            kind = "raw"
            path = "/a.img"
            size = "1G"
            [[vdisk]]
            name = "b"
            kind = "raw"
            path = "/b.img"
            size = 4096
            queues = 4
        "#;
        let c = HostConfig::from_toml(ok, "test").expect("valid");
        assert_eq!(c.vdisk.len(), 2);
        assert_eq!(c.vdisk[0].size, Some(1 << 30));
        assert_eq!(c.vdisk[1].queues, 4);
        assert_eq!(c.flash.path, PathBuf::from("/f.img"));
        assert_eq!(c.flash.size, 2 << 30);
        assert_eq!(c.flash.segment_size, 4 << 20, "defaults fill the rest");

        let dup = ok.replace("\"/b.img\"", "\"/a.img\"");
        let err = HostConfig::from_toml(&dup, "test").expect_err("dup path");
        assert!(err.to_string().contains("image path"), "{err}");
        let on_flash = ok.replace("\"/b.img\"", "\"/f.img\"");
        let err = HostConfig::from_toml(&on_flash, "test").expect_err("image on the flash");
        assert!(err.to_string().contains("image path"), "{err}");
        let err = HostConfig::from_toml("[[vdisk]]\nname = 3", "cfg.toml").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "cfg.toml:2:8: invalid type: integer `3`, expected a string"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_specs_never_panic(spec in ".{0,200}") {
            let _ = VdiskConfig::from_spec(&spec);
        }

        #[test]
        fn arbitrary_toml_never_panics(text in ".{0,400}") {
            let _ = HostConfig::from_toml(&text, "fuzz");
        }
    }
}

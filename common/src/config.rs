//! Configuration of `strata-host`: the vdisks it serves.
//!
//! A config file is TOML with one `[[vdisk]]` table per vdisk. The command line
//! accepts the same fields as a compact spec, `name=d0,path=/img,size=8G`,
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

/// One vdisk as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VdiskConfig {
    /// Name; also the virtio-blk serial number.
    pub name: String,
    /// The raw image: a regular file or a block device.
    pub path: PathBuf,
    /// Create the image with this size if missing; if it exists, its size must match.
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
            if size == 0 || size % u64::from(self.block_size) != 0 {
                return Err(invalid(format!(
                    "size {size} must be a non-zero multiple of the block size {}",
                    self.block_size
                )));
            }
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

/// The whole configuration of one `strata-host`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
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
            if !paths.insert(vdisk.path.clone()) {
                return Err(dup("the image path"));
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
            "name=d0,path=/tmp/d0.img,size=64M,socket=/tmp/d0.sock,queues=2,block-size=4096,read-only,cache=writethrough",
        )
        .expect("valid spec");
        assert_eq!(v.name, "d0");
        assert_eq!(v.path, PathBuf::from("/tmp/d0.img"));
        assert_eq!(v.size, Some(64 << 20));
        assert_eq!(v.socket_path(), PathBuf::from("/tmp/d0.sock"));
        assert_eq!(v.queues, 2);
        assert_eq!(v.block_size, 4096);
        assert!(v.read_only);
        assert_eq!(v.cache, CacheMode::Writethrough);
    }

    #[test]
    fn spec_defaults() {
        let v = VdiskConfig::from_spec("name=a,path=/x").expect("valid spec");
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
            ("path=/x", "name"),
            ("name=a", "path"),
            ("name=a,path=/x,bogus=1", "bogus"),
            ("name=a,path=/x,queues=0", "queues"),
            ("name=a,path=/x,queues=17", "queues"),
            ("name=a,path=/x,block-size=1024", "block-size"),
            ("name=a,path=/x,size=1000", "multiple"),
            ("name=a,path=/x,size=lots", "size"),
            ("name=a b,path=/x", "name must"),
            ("name=a,name=b,path=/x", "twice"),
            ("name=a,path=/x,cache=sometimes", "cache"),
        ];
        for (spec, needle) in cases {
            let err = VdiskConfig::from_spec(spec).expect_err(spec).to_string();
            assert!(err.contains(needle), "{spec}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn toml_file_and_duplicates() {
        let ok = r#"
            [[vdisk]]
            name = "a"
            path = "/a.img"
            size = "1G"
            [[vdisk]]
            name = "b"
            path = "/b.img"
            size = 4096
            queues = 4
        "#;
        let c = HostConfig::from_toml(ok, "test").expect("valid");
        assert_eq!(c.vdisk.len(), 2);
        assert_eq!(c.vdisk[0].size, Some(1 << 30));
        assert_eq!(c.vdisk[1].queues, 4);

        let dup = ok.replace("\"/b.img\"", "\"/a.img\"");
        let err = HostConfig::from_toml(&dup, "test").expect_err("dup path");
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

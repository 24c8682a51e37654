//! What to benchmark: a vhost-user-blk socket or a plain file.
//!
//! Targets are written `vhost-user:SOCKET` or `file:PATH`; in compare mode
//! each one is named, `NAME=vhost-user:SOCKET`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The kind of a target, which decides the libblkio driver used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// A vhost-user-blk backend's unix socket (`virtio-blk-vhost-user`).
    VhostUser,
    /// A regular file or block device, through io_uring with `O_DIRECT`.
    File,
}

impl TargetKind {
    /// The prefix used on the command line.
    pub fn prefix(self) -> &'static str {
        match self {
            TargetKind::VhostUser => "vhost-user",
            TargetKind::File => "file",
        }
    }

    /// The libblkio driver name.
    pub fn driver(self) -> &'static str {
        match self {
            TargetKind::VhostUser => "virtio-blk-vhost-user",
            TargetKind::File => "io_uring",
        }
    }
}

/// One target: its kind and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// Which driver to use.
    pub kind: TargetKind,
    /// The socket or file path.
    pub path: PathBuf,
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (prefix, path) = text.split_once(':').ok_or_else(|| {
            format!("invalid target {text:?}: expected vhost-user:SOCKET or file:PATH")
        })?;
        let kind = match prefix {
            "vhost-user" | "vhost-user-blk" => TargetKind::VhostUser,
            "file" | "io_uring" => TargetKind::File,
            _ => {
                return Err(format!(
                    "invalid target {text:?}: unknown kind {prefix:?} (use vhost-user: or file:)"
                ))
            }
        };
        if path.is_empty() {
            return Err(format!("invalid target {text:?}: the path is empty"));
        }
        Ok(TargetSpec {
            kind,
            path: PathBuf::from(path),
        })
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.prefix(), self.path.display())
    }
}

/// A target with a name, as given to `strata-bench compare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedTarget {
    /// The name shown in the comparison table.
    pub name: String,
    /// The target itself.
    pub spec: TargetSpec,
}

impl FromStr for NamedTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, spec) = text.split_once('=').ok_or_else(|| {
            format!(
                "invalid named target {text:?}: expected NAME=vhost-user:SOCKET or NAME=file:PATH"
            )
        })?;
        if name.is_empty() || name.contains(':') {
            return Err(format!(
                "invalid named target {text:?}: the name before '=' must be non-empty and contain no ':'"
            ));
        }
        Ok(NamedTarget {
            name: name.to_string(),
            spec: spec.parse()?,
        })
    }
}

impl fmt::Display for NamedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t: TargetSpec = "vhost-user:/run/a.sock".parse().unwrap();
        assert_eq!(t.kind, TargetKind::VhostUser);
        assert_eq!(t.path, PathBuf::from("/run/a.sock"));
        let t: TargetSpec = "file:/tmp/x:y.img".parse().unwrap();
        assert_eq!(t.kind, TargetKind::File);
        assert_eq!(t.path, PathBuf::from("/tmp/x:y.img"));
        assert_eq!(t.to_string(), "file:/tmp/x:y.img");
        assert!("nbd:/x".parse::<TargetSpec>().is_err());
        assert!("file:".parse::<TargetSpec>().is_err());
        assert!("/tmp/x".parse::<TargetSpec>().is_err());
    }

    #[test]
    fn parses_named_targets() {
        let t: NamedTarget = "qsd=vhost-user:/run/q.sock".parse().unwrap();
        assert_eq!(t.name, "qsd");
        assert_eq!(t.spec.kind, TargetKind::VhostUser);
        let t: NamedTarget = "raw=file:/tmp/a=b".parse().unwrap();
        assert_eq!(t.spec.path, PathBuf::from("/tmp/a=b"));
        assert!("vhost-user:/x".parse::<NamedTarget>().is_err());
        assert!("=file:/x".parse::<NamedTarget>().is_err());
    }
}

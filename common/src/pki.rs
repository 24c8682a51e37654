//! The cluster's certificates, made by `strata init` and `strata host add`
//! (rcgen) and read by the daemons ([`crate::tls`]).
//!
//! A cluster directory holds:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the cluster CA (the key stays with the administrator's `strata`) |
//! | `pool.pem`, `pool.key` | the pool node's certificate, for the name [`POOL_SERVER_NAME`] |
//! | `hosts/NAME.pem`, `hosts/NAME.key` | one per host; the host's name is the certificate's common name |
//!
//! Keys are ECDSA P-256, written with mode 0600 in directories of mode
//! 0700, never overwritten.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The name every pool certificate carries and every host checks,
/// whatever address it dials.
pub const POOL_SERVER_NAME: &str = "strata-pool";
/// How long certificates made by [`ClusterDir::init`] and
/// [`ClusterDir::add_host`] are valid.
pub const VALIDITY_DAYS: i64 = 3650;
/// Longest host name accepted.
pub const MAX_HOST_NAME_LEN: usize = 64;
/// The identity of the administrators' certificate (made by
/// [`ClusterDir::init`]); no host may take this name.
pub const ADMIN_NAME: &str = "admin";

/// What went wrong making or reading cluster certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `strata init` found a cluster already there.
    #[error("{path} already holds a cluster CA; refusing to replace it")]
    AlreadyInitialised {
        /// The CA certificate found.
        path: PathBuf,
    },
    /// The host already has a certificate.
    #[error("host {name} already has a certificate in {path}")]
    HostExists {
        /// The host.
        name: String,
        /// Its certificate.
        path: PathBuf,
    },
    /// A name kept for the administrators' certificate.
    #[error("host name {name:?} is reserved for the administrators' certificate")]
    ReservedName {
        /// The name given.
        name: String,
    },
    /// A host name that cannot be used.
    #[error("invalid host name {name:?}: use 1 to 64 of a-z, 0-9, '-', '_' and '.', starting with a letter or digit")]
    BadHostName {
        /// The name given.
        name: String,
    },
    /// rcgen refused (a malformed CA file or key, say).
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// A cluster directory (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct ClusterDir {
    root: PathBuf,
}

impl ClusterDir {
    /// The cluster directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> ClusterDir {
        ClusterDir { root: root.into() }
    }

    /// Where it is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// The pool node's certificate.
    pub fn pool_cert(&self) -> PathBuf {
        self.root.join("pool.pem")
    }

    /// The pool node's private key.
    pub fn pool_key(&self) -> PathBuf {
        self.root.join("pool.key")
    }

    /// Host `name`'s certificate.
    pub fn host_cert(&self, name: &str) -> PathBuf {
        self.root.join("hosts").join(format!("{name}.pem"))
    }

    /// Host `name`'s private key.
    pub fn host_key(&self, name: &str) -> PathBuf {
        self.root.join("hosts").join(format!("{name}.key"))
    }

    /// Makes a new cluster: the CA, the pool's certificate and the
    /// administrators' client certificate (as host [`ADMIN_NAME`]).
    /// [`PkiError::AlreadyInitialised`] if a CA is there already.
    pub fn init(&self) -> Result<(), PkiError> {
        if self.ca_cert().exists() {
            return Err(PkiError::AlreadyInitialised {
                path: self.ca_cert(),
            });
        }
        make_dir(&self.root)?;
        let ca_key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Strata cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) = validity_from_now();
        let ca_cert = params
            .self_signed(&ca_key)
            .map_err(cert_err("signing the CA certificate"))?;
        write_new(&self.ca_key(), ca_key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&self.ca_cert(), ca_cert.pem().as_bytes(), 0o644)?;
        let issuer = Issuer::new(params, ca_key);
        let (not_before, not_after) = validity_from_now();
        make_dir(&self.root.join("hosts"))?;
        self.issue(
            &issuer,
            ADMIN_NAME,
            vec![format!("{ADMIN_NAME}.host.strata")],
            ExtendedKeyUsagePurpose::ClientAuth,
            (not_before, not_after),
            (&self.host_cert(ADMIN_NAME), &self.host_key(ADMIN_NAME)),
        )?;
        let (not_before, not_after) = validity_from_now();
        self.issue(
            &issuer,
            "strata pool",
            vec![
                POOL_SERVER_NAME.to_string(),
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            (not_before, not_after),
            (&self.pool_cert(), &self.pool_key()),
        )
    }

    /// Makes host `name`'s certificate, valid for [`VALIDITY_DAYS`].
    pub fn add_host(&self, name: &str) -> Result<(), PkiError> {
        self.add_host_valid(name, validity_from_now())
    }

    /// Makes host `name`'s certificate valid from `validity.0` to
    /// `validity.1` (tests use this for expired certificates).
    pub fn add_host_valid(
        &self,
        name: &str,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Result<(), PkiError> {
        check_host_name(name)?;
        if name == ADMIN_NAME {
            return Err(PkiError::ReservedName {
                name: name.to_string(),
            });
        }
        let cert = self.host_cert(name);
        if cert.exists() {
            return Err(PkiError::HostExists {
                name: name.to_string(),
                path: cert,
            });
        }
        let issuer = self.load_issuer()?;
        make_dir(&self.root.join("hosts"))?;
        self.issue(
            &issuer,
            name,
            vec![format!("{name}.host.strata")],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
            (&cert, &self.host_key(name)),
        )
    }

    fn load_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key_pem = read_text(&self.ca_key())?;
        let cert_pem = read_text(&self.ca_cert())?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err("reading the CA key"))?;
        Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_err("reading the CA certificate"))
    }

    fn issue(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        common_name: &str,
        alt_names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
        (cert_path, key_path): (&Path, &Path),
    ) -> Result<(), PkiError> {
        let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
        let mut params =
            CertificateParams::new(alt_names).map_err(cert_err("naming a certificate"))?;
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, issuer)
            .map_err(cert_err("signing a certificate"))?;
        write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(cert_path, cert.pem().as_bytes(), 0o644)
    }
}

/// Checks that `name` may name a host (it becomes a file name and a
/// certificate's common name).
pub fn check_host_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOST_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadHostName {
            name: name.to_string(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity_from_now() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::minutes(5),
        now + Duration::days(VALIDITY_DAYS),
    )
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { what, source }
}

fn make_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io {
            what: "cannot create directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        what: "cannot read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that must not exist yet, with `mode`, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io_err = |source| PkiError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_and_add_host_make_files_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = ClusterDir::new(dir.path().join("cluster"));
        cluster.init().expect("init");
        assert!(matches!(
            cluster.init(),
            Err(PkiError::AlreadyInitialised { .. })
        ));
        cluster.add_host("host-1").expect("add host");
        assert!(matches!(
            cluster.add_host("host-1"),
            Err(PkiError::HostExists { .. })
        ));
        assert!(matches!(
            cluster.add_host(ADMIN_NAME),
            Err(PkiError::ReservedName { .. })
        ));
        for key in [
            cluster.ca_key(),
            cluster.pool_key(),
            cluster.host_key(ADMIN_NAME),
            cluster.host_key("host-1"),
        ] {
            let mode = fs::metadata(&key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let text = fs::read_to_string(cluster.host_cert("host-1")).expect("cert");
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn host_names_are_checked() {
        for bad in ["", "Host", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_host_name(bad).is_err(), "{bad:?}");
        }
        for good in ["h", "host-1", "rack2.node_3", &"x".repeat(64)] {
            assert!(check_host_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn add_host_without_init_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ClusterDir::new(dir.path())
            .add_host("h")
            .expect_err("no CA");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }
}

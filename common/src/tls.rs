//! TLS between hosts and the pool: TLS 1.3 only, both sides authenticated
//! by certificates of the cluster CA ([`crate::pki`]). A peer without such
//! a certificate fails the handshake, before any request is read.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::pki::ClusterDir;

/// What went wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is missing or unreadable.
    #[error("cannot read {path}: {reason} (make the cluster's certificates with `strata init` and `strata host add`)")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The pool's server configuration: its certificate, and client
/// certificates required and checked against the cluster CA.
pub fn server_config(cluster: &ClusterDir) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(ca_roots(cluster)?);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            read_certs(&cluster.pool_cert())?,
            read_key(&cluster.pool_key())?,
        )?;
    Ok(Arc::new(config))
}

/// Host `host`'s client configuration: the cluster CA as the only root, and
/// the host's certificate.
pub fn client_config(cluster: &ClusterDir, host: &str) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_from(cluster, &cluster.host_cert(host), &cluster.host_key(host))
}

/// A client configuration with the cluster CA as the only root and the
/// certificate and key in `cert` and `key` (any, for tests of refusal).
pub fn client_config_from(
    cluster: &ClusterDir,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca_roots(cluster)?)
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the cluster CA but offers no
/// certificate (for tests that the pool refuses it).
pub fn anonymous_client_config(cluster: &ClusterDir) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca_roots(cluster)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host name a verified client certificate carries (its common name),
/// if it is a valid host name.
pub fn host_name_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    crate::pki::check_host_name(cn).ok()?;
    Some(cn.to_string())
}

fn ca_roots(cluster: &ClusterDir) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&cluster.ca_cert())? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(path, e))?;
    if certs.is_empty() {
        return Err(read_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| read_error(path, e))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| read_error(path, e))
}

fn read_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

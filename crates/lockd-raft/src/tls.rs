//! Mutual TLS on the Raft port, when the node has a certificate: both ends present one
//! signed by the cluster's CA (`--tls-ca`, or the node's own certificate when the nodes
//! share one), and the dialer checks that the listener's is valid for the address it
//! dialed (an IP address or a host name in the certificate). The auth-key login then runs
//! inside the TLS session, as without TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

/// Where a node's peer TLS material is.
#[derive(Clone, Debug)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificates that sign the nodes' certificates.
    pub ca: PathBuf,
}

/// The loaded configuration: an acceptor for the listener and a connector for dialing.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

impl PeerTls {
    pub fn load(f: &PeerTlsFiles) -> Result<PeerTls, String> {
        let chain = load_certs(&f.cert)?;
        let key = PrivateKeyDer::from_pem_file(&f.key)
            .map_err(|e| format!("{}: {e}", f.key.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(&f.ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", f.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("peer certificate verifier: {e}"))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", f.cert.display()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", f.cert.display()))?;
        Ok(PeerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

/// The name a dialer expects in the certificate of `addr` (`host:port`).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("{addr}: {e}"))
}

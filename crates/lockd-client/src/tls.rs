//! TLS for the client: trust a CA (or the server's self-signed certificate) from a PEM
//! file, and check the server's name.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{rustls, TlsConnector};

use crate::error::Error;

/// How to reach a server over TLS.
#[derive(Clone)]
pub struct TlsOptions {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsOptions {
    /// Trusts the certificates in the PEM file `ca`, and expects the server to be `name`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockd_client::Error> {
    /// use lockd_client::{Client, TlsOptions};
    /// let tls = TlsOptions::from_ca_file("/etc/lockd/ca.pem".as_ref(), "locks.example.org")?;
    /// let client = Client::connect_tls("locks.example.org:7531", "s3cret", tls).await?;
    /// # Ok(()) }
    /// ```
    pub fn from_ca_file(ca: &Path, name: &str) -> Result<TlsOptions, Error> {
        let bad = |m: String| Error::Tls(format!("{}: {m}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| Error::Tls(format!("server name {name:?}: {e}")))?;
        Ok(TlsOptions {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    pub(crate) async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Error> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| Error::Tls(e.to_string()))
    }
}

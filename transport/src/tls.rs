//! TLS on the links between role processes.
//!
//! With `[cluster.tls]` set, every role serves its gRPC/Flight port (health
//! included) over TLS with its certificate, and every call to another role
//! verifies that role's certificate against the cluster's CA and the name
//! dialed (or the configured `server_name`). Combined with the cluster
//! secret, a host on the network can neither read the traffic nor pose as a
//! role. Like the secret, the settings are process-wide and installed once
//! at start-up, so every client and server built afterwards uses them.

use std::path::Path;
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::TransportError;

/// The TLS material of this process, read from PEM files.
#[derive(Clone)]
pub struct ClusterTls {
    identity: Identity,
    ca: Certificate,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::TlsFile {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

impl ClusterTls {
    /// Reads this process's certificate chain and key and the CA every
    /// role's certificate chains to.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        server_name: Option<String>,
    ) -> Result<Self, TransportError> {
        let (cert_pem, key_pem, ca_pem) = (
            read(cert, "certificate")?,
            read(key, "key")?,
            read(ca, "CA certificate")?,
        );
        // tonic parses them only at the first connection; a wrong file
        // must fail start-up instead, naming itself.
        for (pem, path, what, marker) in [
            (&cert_pem, cert, "certificate", "CERTIFICATE-----"),
            (&key_pem, key, "key", "PRIVATE KEY-----"),
            (&ca_pem, ca, "CA certificate", "CERTIFICATE-----"),
        ] {
            if !String::from_utf8_lossy(pem).contains(marker) {
                return Err(TransportError::TlsFile {
                    what: what.to_string(),
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("no PEM block ending in \"{marker}\""),
                    ),
                });
            }
        }
        Ok(ClusterTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
            server_name,
        })
    }

    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone())
    }

    /// The client side for a role dialed at `host`.
    pub(crate) fn client_config(&self, host: &str) -> ClientTlsConfig {
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(name)
    }
}

static TLS: OnceLock<Option<ClusterTls>> = OnceLock::new();

/// Sets this process's TLS settings; only the first call counts.
pub fn install_cluster_tls(tls: Option<ClusterTls>) {
    let _ = TLS.set(tls);
}

pub(crate) fn cluster_tls() -> Option<&'static ClusterTls> {
    TLS.get().and_then(Option::as_ref)
}

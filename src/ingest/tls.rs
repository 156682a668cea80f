//! TLS for the ALS listener: certificate files checked at start-up, and the accept loop.
//!
//! meshaudit runs its own accept loop (rather than tonic's `ServerTlsConfig`) for three reasons:
//! the `ServerConfig` built while validating the settings is the one that serves (one code path,
//! so a key that does not match its certificate fails at start-up, naming the setting); failed
//! handshakes are counted (`als_messages_rejected_total{reason="tls_handshake"}`), which tonic
//! only logs at debug; and every handshake runs in its own task under the connection's deadline
//! (`als_handshake_timeout_secs`) and holds one of the listener's connection slots
//! ([`super::conn`]), so a peer that connects and stalls holds nothing but its own socket, for
//! at most that long, and their number is bounded.
//!
//! Client certificates, when a client CA is configured, are verified by rustls during the
//! handshake (chain to the CA, validity, proof of key possession): a certificate from another
//! CA never gets an HTTP/2 connection. A peer without a certificate is let through the handshake
//! so that it gets a readable `UNAUTHENTICATED` status at its first stream instead of a bare TLS
//! alert; [`super::peer_auth`] enforces the certificate and the SPIFFE allow-list per stream, and
//! the connection is closed at the handshake deadline (it cannot hold a slot).
//! The crypto provider is ring, chosen explicitly (not the process default).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::conn::{Deadline, Guarded, Slot, Upgrade};
use crate::telemetry::{Metrics, Rejection};

/// A certificate, key or CA file that cannot be used. `key()` names the setting, `fix()` says
/// what to do; messages never include key material.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{path} is not valid PEM ({detail})")]
    Pem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("the private key in {key_path} does not belong to the certificate in {cert_path}")]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    #[error("{path} was refused by the TLS library: {detail}")]
    Refused {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl TlsSetupError {
    /// The setting (TOML key) at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TlsSetupError::Read { key, .. }
            | TlsSetupError::Empty { key, .. }
            | TlsSetupError::Pem { key, .. }
            | TlsSetupError::Refused { key, .. } => key,
            TlsSetupError::KeyMismatch { .. } => "als_tls_key",
        }
    }

    pub fn fix(&self) -> &'static str {
        match self.key() {
            "als_tls_cert" => "point it at a readable PEM file holding the server certificate (leaf first, then any intermediates)",
            "als_tls_key" => "point it at the readable PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate in --als-tls-cert",
            _ => "point it at a readable PEM file holding the CA certificate(s) that issue the proxies' client certificates (for Istio, the mesh root CA)",
        }
    }
}

/// A TLS server configuration for the ALS listener, ready to serve.
#[derive(Clone)]
pub struct AlsTls {
    config: Arc<ServerConfig>,
    client_auth: bool,
}

impl fmt::Debug for AlsTls {
    // ServerConfig holds the private key: print only what is safe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlsTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl AlsTls {
    /// Reads and checks the server certificate chain, its key and the optional client CA
    /// bundle, and builds the server configuration (TLS 1.2 and 1.3, ALPN `h2`).
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<AlsTls, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs("als_tls_cert", cert, "certificate")?;
        let key_der = read_key(key)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Refused {
                key: "als_tls_cert",
                path: cert.to_owned(),
                detail: e.to_string(),
            })?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs("als_tls_client_ca", ca, "certificate")? {
                    roots.add(c).map_err(|e| TlsSetupError::Refused {
                        key: "als_tls_client_ca",
                        path: ca.to_owned(),
                        detail: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsSetupError::Refused {
                            key: "als_tls_client_ca",
                            path: ca.to_owned(),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsSetupError::KeyMismatch {
                    cert_path: cert.to_owned(),
                    key_path: key.to_owned(),
                },
                other => TlsSetupError::Refused {
                    key: "als_tls_key",
                    path: key.to_owned(),
                    detail: other.to_string(),
                },
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(AlsTls {
            config: Arc::new(config),
            client_auth: client_ca.is_some(),
        })
    }

    /// True when clients must present a certificate from the client CA.
    pub fn client_auth(&self) -> bool {
        self.client_auth
    }
    /// The handshake step of [`super::conn::incoming`] for this configuration.
    pub fn upgrade(&self, metrics: Arc<Metrics>) -> TlsUpgrade {
        TlsUpgrade {
            acceptor: TlsAcceptor::from(Arc::clone(&self.config)),
            client_auth: self.client_auth,
            metrics,
        }
    }
}

/// One connection's TLS handshake, under the connection's deadline (`als_handshake_timeout_secs`,
/// counted as `tls_handshake` when it passes). A client without a certificate where one is
/// required gets its connection, so that its first stream reads a clear `UNAUTHENTICATED`, but
/// only until that same deadline measured again from the handshake's end: it never holds one.
#[derive(Clone)]
pub struct TlsUpgrade {
    acceptor: TlsAcceptor,
    client_auth: bool,
    metrics: Arc<Metrics>,
}

impl Upgrade for TlsUpgrade {
    type Io = TlsStream<TcpStream>;

    async fn upgrade(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        slot: Slot,
        deadline: Instant,
    ) -> Option<Guarded<TlsStream<TcpStream>>> {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let no_cert = self.client_auth && tls.get_ref().1.peer_certificates().is_none();
                let done = Instant::now();
                // The preface is due by the same deadline as the handshake: a real client sends
                // it the moment the handshake ends.
                let g =
                    Guarded::new(tls, Some(slot), Arc::clone(&self.metrics)).preface_by(deadline);
                Some(if no_cert {
                    g.end_at(Deadline::NoClientCert, done + (deadline - started))
                } else {
                    g
                })
            }
            Ok(Err(e)) => {
                self.metrics.rejected(Rejection::TlsHandshake);
                handshake_failed(peer, &e);
                None
            }
            Err(_) => {
                self.metrics.rejected(Rejection::TlsHandshake);
                debug!(%peer, "ALS TLS handshake timed out (als_handshake_timeout_secs)");
                None
            }
        }
    }
}

/// Certificate problems are worth a warning (a proxy with the wrong CA, or a stranger); a
/// connection closed before finishing (a port scan, a TCP probe) only a debug line.
fn handshake_failed(peer: SocketAddr, e: &io::Error) {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            warn!(%peer, error = %e, "refusing ALS client: its certificate is not trusted by --als-tls-client-ca");
        }
        Some(_) => warn!(%peer, error = %e, "ALS TLS handshake failed"),
        None => debug!(%peer, error = %e, "ALS connection closed during the TLS handshake"),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(
    key: &'static str,
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem {
            key,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            key,
            path: path.to_owned(),
            what,
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let key = "als_tls_key";
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsSetupError::Empty {
            key,
            path: path.to_owned(),
            what: "private key",
        },
        // Say which kind of problem only: the parser's own message could quote the file.
        other => TlsSetupError::Pem {
            key,
            path: path.to_owned(),
            detail: pem_problem(&other).into(),
        },
    })
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a section has no END line",
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        E::Base64Decode(_) => "a section is not valid base64",
        E::SectionTooLarge => "a section is too large",
        _ => "unreadable PEM",
    }
}

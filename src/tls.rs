//! TLS listeners: rustls (ring provider, TLS 1.2 and 1.3 only) configured from PEM files, an
//! optional client-certificate check (mTLS) with CRLs, the certificate's identity as username,
//! and reloading the files without touching open connections.
//!
//! The handshake runs on the session's Arbiter (see `listener`), bounded by
//! `limits.connect_timeout` so a client that never finishes it frees its slot.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;

use crate::config::{CertIdentity, TlsConfig};

/// Why a TLS configuration could not be built from its files. Never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{path}: no certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("client_ca {path}: {source}")]
    ClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("certificate and key: {0}")]
    Certificate(rustls::Error),
}

/// Why a connection ended before it became a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not completed within {0:?}")]
    TimedOut(Duration),
    #[error("TLS handshake failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("client certificate gives no username: {0}")]
    Identity(&'static str),
}

/// One TLS listener's acceptor. The `ServerConfig` sits behind a lock so a reload can swap it:
/// each handshake takes the `Arc` current when it starts, so open connections keep theirs.
pub struct TlsAcceptor {
    files: TlsConfig,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    pub fn new(files: TlsConfig) -> Result<TlsAcceptor, TlsError> {
        let config = RwLock::new(Arc::new(server_config(&files)?));
        Ok(TlsAcceptor { files, config })
    }

    /// Reads the files again. On any error the configuration in use is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(&self.files)?);
        // Poisoning cannot leave a half-written `Arc`, so a poisoned lock is still usable.
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The configuration new handshakes use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs the server handshake within `timeout`. Returns the stream and, when
    /// `identity_as_username` is set, the username taken from the client certificate.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, Option<String>), HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        let tls = tokio::time::timeout(timeout, acceptor.accept(stream))
            .await
            .map_err(|_| HandshakeError::TimedOut(timeout))??;
        let username = match self.files.identity_as_username {
            None => None,
            Some(source) => {
                // The verifier required a certificate, so one is there; checked all the same.
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .ok_or(HandshakeError::Identity("no client certificate"))?;
                Some(certificate_identity(cert, source).map_err(HandshakeError::Identity)?)
            }
        };
        Ok((tls, username))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Builds a `ServerConfig` from the files: TLS 1.2 and 1.3 only (rustls has nothing older).
fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        path: files.key.clone(),
        source,
    })?;
    let verifier = match &files.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|source| TlsError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            }
            let mut builder = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
            if let Some(crl) = &files.crl {
                // Only the client's own certificate is checked, as Mosquitto's `crlfile` does
                // (OpenSSL without CRL_CHECK_ALL); an unknown status is still a refusal.
                builder = builder
                    .with_crls(crls(crl)?)
                    .only_check_end_entity_revocation();
            }
            builder.build()?
        }
    };
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Certificate)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Certificate)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)
}

/// The username a verified client certificate stands for: its only CN, or its first DNS SAN.
/// It must be UTF-8 without control characters (a CN in BMPString or T61String is refused).
pub fn certificate_identity(
    cert: &CertificateDer<'_>,
    source: CertIdentity,
) -> Result<String, &'static str> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| "unparsable certificate")?;
    let name = match source {
        CertIdentity::Cn => {
            let mut cns = x509.subject().iter_common_name();
            let cn = cns.next().ok_or("no CN in the subject")?;
            // Which of several CNs is "the" name is ambiguous: refused rather than guessed.
            if cns.next().is_some() {
                return Err("more than one CN in the subject");
            }
            cn.as_str().map_err(|_| "the CN is not a UTF-8 string")?
        }
        CertIdentity::San => x509
            .subject_alternative_name()
            .map_err(|_| "malformed subjectAltName")?
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(*dns),
                    _ => None,
                })
            })
            .ok_or("no DNS name in subjectAltName")?,
    };
    if name.is_empty() || name.len() > usize::from(u16::MAX) {
        return Err("empty or over-long name");
    }
    if name.chars().any(char::is_control) {
        return Err("control characters in the name");
    }
    Ok(name.to_owned())
}

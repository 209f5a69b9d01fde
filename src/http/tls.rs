//! HTTPS with rustls (groupcomm-proxy §10.5: the HTTP client authenticates to the proxy
//! over TLS), and mTLS by certificate pinning: a client certificate is accepted if its
//! SHA-256 is on the allow-list, whoever issued it, and its identity becomes the address
//! the engine sees (see [`super::ClientIdentity`]).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use sha2::Digest;

use super::{ClientIdentity, TlsConfig};

/// Accepts TLS connections and tells which identity (its address) the client proved.
#[derive(Clone)]
pub(super) struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    clients: Option<Arc<Vec<ClientIdentity>>>,
}

impl Acceptor {
    /// The handshake, then the address of the client's certificate (None without mTLS).
    pub(super) async fn accept(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> io::Result<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        Option<IpAddr>,
    )> {
        let s = self.inner.accept(tcp).await?;
        let Some(clients) = &self.clients else {
            return Ok((s, None));
        };
        let cert = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| io::Error::other("no client certificate"))?;
        let fp: [u8; 32] = sha2::Sha256::digest(cert.as_ref()).into();
        let id = clients
            .iter()
            .find(|c| c.sha256 == fp)
            .ok_or_else(|| io::Error::other("unknown client certificate"))?;
        Ok((s, Some(id.address)))
    }
}

/// A client certificate verifier that accepts exactly the pinned certificates and checks
/// that the client holds the key (the handshake signature), with ring's algorithms.
#[derive(Debug)]
struct Pinned {
    allowed: Vec<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if self.allowed.contains(&fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The acceptor of a `[http.tls]` configuration; a file that cannot be read or parsed is
/// an error naming it.
pub(super) fn acceptor(cfg: &TlsConfig) -> io::Result<Acceptor> {
    let named = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        io::Error::other(format!("http.tls.{what} {}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| named("cert", &cfg.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| named("cert", &cfg.cert, &e))?;
    if certs.is_empty() {
        return Err(named("cert", &cfg.cert, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| named("key", &cfg.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &cfg.clients {
        None => builder.with_no_client_auth(),
        Some(c) => builder.with_client_cert_verifier(Arc::new(Pinned {
            allowed: c.iter().map(|c| c.sha256).collect(),
            algs: provider.signature_verification_algorithms,
        })),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| named("key", &cfg.key, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Acceptor {
        inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        clients: cfg.clients.clone().map(Arc::new),
    })
}

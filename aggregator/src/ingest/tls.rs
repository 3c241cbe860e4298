//! TLS for the QUIC ingest endpoint: our certificate, and client certificates required
//! and verified against one CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Loads a private key from a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}

/// Unread bytes one node's stream may buffer here (plenty for 100 ms of RTT at the rate of
/// a large node: about 5 MB/s).
const STREAM_WINDOW: u32 = 512 * 1024;

/// A QUIC server config requiring client certificates signed by `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).context("CA certificate rejected")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot build the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .context("server certificate and key do not match")?;
    tls.alpn_protocols = vec![common::wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("TLS config unusable for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            30_000,
        ))))
        // What a connection may have sent but we have not read yet, per stream and in all:
        // quinn's defaults (1.25 MB, unbounded) times 1000 nodes would be gigabytes.
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(2 * STREAM_WINDOW))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(2))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

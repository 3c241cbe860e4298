//! Identity: the development PKI and reading a node's name out of its certificate.
//!
//! Every node has its own client certificate whose subject common name is the node name;
//! the aggregator trusts one CA and takes a connection's node name from the certificate,
//! never from what the agent says. `cargo xtask certs` writes these to disk; nothing here
//! touches files.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

/// Why a certificate could not be made or read.
#[derive(Debug, Error)]
pub enum PkiError {
    /// rcgen refused (bad name, bad key, bad CA PEM).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The DER could not be parsed as X.509.
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    /// The certificate has no usable common name.
    #[error("certificate has no subject common name")]
    NoCommonName,
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Auto-DevOps dev PKI");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A new self-signed certificate authority.
pub fn new_ca(common_name: &str) -> Result<CertPair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue(
    ca: &CertPair,
    common_name: &str,
    alt_names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(alt_names)?;
    params.distinguished_name = distinguished_name(common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate for the aggregator, valid for each of `names` (DNS names or IPs).
pub fn issue_aggregator(ca: &CertPair, names: &[&str]) -> Result<CertPair, PkiError> {
    let alt = names.iter().map(|n| n.to_string()).collect();
    issue(ca, "aggregator", alt, ExtendedKeyUsagePurpose::ServerAuth)
}

/// A client certificate naming `node` as its subject common name.
pub fn issue_node(ca: &CertPair, node: &str) -> Result<CertPair, PkiError> {
    issue(
        ca,
        node,
        vec![node.to_string()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

/// The node name a client certificate (DER) was issued to: its subject common name.
pub fn node_name_from_cert(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(PkiError::NoCommonName)?;
    Ok(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        decode_base64(&body)
    }

    // Small base64 decoder so the test needs no extra dependency.
    fn decode_base64(s: &str) -> Vec<u8> {
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => (c - b'A') as u32,
                b'a'..=b'z' => (c - b'a' + 26) as u32,
                b'0'..=b'9' => (c - b'0' + 52) as u32,
                b'+' => 62,
                _ => 63,
            }
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= val(c) << (18 - 6 * i);
            }
            let n_out = chunk.len() * 6 / 8;
            for i in 0..n_out {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[test]
    fn node_certificate_names_its_node() {
        let ca = new_ca("test CA").unwrap();
        let node = issue_node(&ca, "worker-7").unwrap();
        assert_eq!(
            node_name_from_cert(&der_of(&node.cert_pem)).unwrap(),
            "worker-7"
        );
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            node_name_from_cert(b"not a cert"),
            Err(PkiError::Parse(_))
        ));
    }
}

//! What keywarden needs to know about a certificate: validity, serial,
//! issuer, names, key type, and its ARI identifier.

use base64ct::{Base64UrlUnpadded, Encoding};
use chrono::{DateTime, NaiveDateTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;
use x509_parser::public_key::PublicKey;

use crate::config::acme::KeyType;

/// The leaf certificate of a chain, as parsed.
/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a PEM file: {0}")]
    Pem(#[source] x509_parser::error::PEMError),
    #[error("no CERTIFICATE block in the file")]
    NoCertificate,
    #[error("not an X.509 certificate: {0}")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("timestamp {0} out of range")]
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Hex, colon-free, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub issuer: String,
    pub subject: String,
    pub not_before: NaiveDateTime,
    pub not_after: NaiveDateTime,
    /// DNS names in the subjectAltName extension, lower-cased and sorted.
    pub domains: Vec<String>,
    pub key_type: Option<KeyType>,
    /// `base64url(AKI keyIdentifier) "." base64url(serial)` (RFC 9773), when
    /// the certificate has an AKI.
    pub ari_id: Option<String>,
}

impl CertInfo {
    /// Whether the certificate names exactly these domains.
    pub fn matches_domains(&self, wanted: &[String]) -> bool {
        let mut w: Vec<String> = wanted.iter().map(|d| d.to_ascii_lowercase()).collect();
        w.sort();
        w.dedup();
        w == self.domains
    }
}

/// The DER certificates in a PEM file, in order.
pub fn pem_chain(pem: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let mut out = Vec::new();
    for item in Pem::iter_from_buffer(pem) {
        let item = item.map_err(CertError::Pem)?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(out)
}

fn timestamp(t: i64) -> Result<NaiveDateTime, CertError> {
    DateTime::from_timestamp(t, 0)
        .map(|d| d.naive_utc())
        .ok_or(CertError::Timestamp(t))
}

/// Parses one DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(CertError::X509)?;
    let validity = cert.validity();
    let mut domains = Vec::new();
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::DNSName(d) = name {
                        domains.push(d.to_ascii_lowercase());
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    domains.sort();
    domains.dedup();
    let key_type = match cert.public_key().parsed() {
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => Some(KeyType::EcdsaP256),
            384 => Some(KeyType::EcdsaP384),
            _ => None,
        },
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Some(KeyType::Rsa2048),
            3072 => Some(KeyType::Rsa3072),
            _ => None,
        },
        _ => None,
    };
    let raw_serial = cert.raw_serial();
    Ok(CertInfo {
        serial: raw_serial.iter().map(|b| format!("{b:02X}")).collect(),
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        not_before: timestamp(validity.not_before.timestamp())?,
        not_after: timestamp(validity.not_after.timestamp())?,
        domains,
        key_type,
        ari_id: aki.map(|k| {
            format!(
                "{}.{}",
                Base64UrlUnpadded::encode_string(&k),
                Base64UrlUnpadded::encode_string(raw_serial)
            )
        }),
    })
}

/// Parses the leaf (first certificate) of a PEM chain.
pub fn parse_pem_leaf(pem: &[u8]) -> Result<CertInfo, CertError> {
    let chain = pem_chain(pem)?;
    parse(&chain[0])
}

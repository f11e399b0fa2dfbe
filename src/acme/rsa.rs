//! RSA certificate keys. ring signs with RSA keys but cannot make them, so
//! the key is generated with the `rsa` crate (from the OS generator) and
//! handed to rcgen as PKCS#8.

use rsa::pkcs8::EncodePrivateKey;
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::AcmeError;
use crate::config::acme::KeyType;

pub fn generate(key_type: KeyType) -> Result<rcgen::KeyPair, AcmeError> {
    let bits = match key_type {
        KeyType::Rsa2048 => 2048,
        KeyType::Rsa3072 => 3072,
        other => return Err(AcmeError::Rsa(format!("{} is not an RSA key type", other.as_str()))),
    };
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).map_err(|e| AcmeError::Rsa(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| AcmeError::Rsa(e.to_string()))?;
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der.as_bytes()), &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| AcmeError::Rsa(e.to_string()))
}

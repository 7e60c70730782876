//! The farm's certificates (a CA, a leaf it signs, a self-signed leaf) and the TLS server settings.

use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use crate::FarmError;

/// Expiry of both leaf certificates, 2031-01-01T00:00:00Z, in seconds since the Unix epoch.
pub const LEAF_NOT_AFTER_UNIX_SECS: i64 = 1_924_992_000;

/// Names every leaf is valid for; clients reach the farm as `localhost` or `127.0.0.1`.
const LEAF_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// What [`generate`] produces.
#[derive(Debug)]
pub(crate) struct Certificates {
    /// The CA certificate, for clients to trust.
    pub(crate) ca_pem: String,
    /// Serves the leaf signed by the CA.
    pub(crate) ca_signed: Arc<ServerConfig>,
    /// Serves the self-signed leaf.
    pub(crate) self_signed: Arc<ServerConfig>,
}

/// Generates fresh keys and certificates; nothing is read from or written to disk.
pub(crate) fn generate() -> Result<Certificates, FarmError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sitefarm test CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "sitewatch sitefarm");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = date_time_ymd(2024, 1, 1);
    // Outlives the leaf so that only the leaf's date matters to expiry checks.
    ca_params.not_after = date_time_ymd(2036, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut ca_signed_params = leaf_params("sitefarm")?;
    ca_signed_params.use_authority_key_identifier_extension = true;
    let leaf_cert = ca_signed_params.signed_by(&leaf_key, &ca)?;

    let self_key = KeyPair::generate()?;
    let self_cert = leaf_params("sitefarm self-signed")?.self_signed(&self_key)?;

    Ok(Certificates {
        ca_pem: ca_cert.pem(),
        ca_signed: server_config(leaf_cert.der().clone(), &leaf_key)?,
        self_signed: server_config(self_cert.der().clone(), &self_key)?,
    })
}

fn leaf_params(organization: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(LEAF_NAMES.map(str::to_owned))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = date_time_ymd(2024, 1, 1);
    params.not_after = date_time_ymd(2031, 1, 1);
    Ok(params)
}

fn server_config(
    cert: CertificateDer<'static>,
    key: &KeyPair,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // An explicit provider, because the process-wide default may be unset or be another one
    // (the monitor's tests share the process).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_expiry_constant_matches_the_certificate_date() {
        let params = leaf_params("test").unwrap();
        assert_eq!(params.not_after.unix_timestamp(), LEAF_NOT_AFTER_UNIX_SECS);
    }

    #[test]
    fn generates_pem_and_configs() {
        let certs = generate().unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            certs.ca_signed.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}

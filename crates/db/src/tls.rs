//! TLS for PostgreSQL connections with libpq's `sslmode` meanings, which
//! tokio-postgres does not know: `require` encrypts without checking the
//! certificate (unless a CA file is given), `verify-ca` checks the chain,
//! `verify-full` also the host name.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::settings::{PgSettingsError, SslMode};

pub(crate) fn tls_config(
    mode: SslMode,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, PgSettingsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| PgSettingsError::Tls(e.to_string()))?;
    // As libpq does: with a root CA file, `require` verifies the chain like `verify-ca`,
    // so an operator who gave a CA file is never silently left unverified.
    let mode = match (mode, ca_file) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        _ => mode,
    };
    let check = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Check::Nothing,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::ChainAndName,
    };
    let chain = match check {
        Check::Nothing => None,
        Check::Chain | Check::ChainAndName => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(ca_file)?),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| PgSettingsError::Tls(e.to_string()))?,
        ),
    };
    let verifier = Verifier {
        provider: Arc::clone(&provider),
        chain,
        check,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, PgSettingsError> {
    match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            sitewatch_service::tls::add_pem_file(&mut roots, path).map_err(|reason| {
                PgSettingsError::CaFile {
                    path: path.to_owned(),
                    reason,
                }
            })?;
            Ok(roots)
        }
        None => Ok(sitewatch_service::tls::system_roots()),
    }
}

/// What of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing (`require` without a CA file, as libpq): the handshake's
    /// signatures are still checked, so the connection is encrypted.
    Nothing,
    /// The chain leads to a trusted CA, for any host name (`verify-ca`).
    Chain,
    /// The chain, and that it was issued for the host (`verify-full`).
    ChainAndName,
}

/// Checks the server's certificate as far as the mode asks.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    /// The chain's verifier, unless nothing is checked.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check: Check,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

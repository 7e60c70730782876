//! Trust anchors for the TLS clients both services make (probed sites, PostgreSQL).

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The certificates of a PEM file; the error says what is wrong with it
/// (unreadable, not PEM, or no certificate in it) without naming the file,
/// which the caller does along with its setting.
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

/// The operating system's trusted CAs, as far as they parse.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// Adds the certificates of a PEM file to `roots`.
pub fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    for cert in pem_certificates(path)? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(())
}

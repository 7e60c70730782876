//! The certificate and key a server serves TLS with.

use std::fmt;
use std::path::Path;

use crate::run_as::RunAs;
use crate::PgError;

/// A certificate and private key for the server, in PEM.
#[derive(Clone)]
pub struct TlsFiles {
    /// The server certificate (chain), PEM.
    pub cert_pem: String,
    /// The server's private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsFiles {
    /// Writes the files where `ssl=on` looks for them by default, so the
    /// server needs no `ssl_cert_file`/`ssl_key_file` settings.
    pub(crate) fn install(&self, data_dir: &Path, run_as: RunAs) -> Result<(), PgError> {
        run_as.write_private(&data_dir.join("server.crt"), &self.cert_pem)?;
        run_as.write_private(&data_dir.join("server.key"), &self.key_pem)
    }
}

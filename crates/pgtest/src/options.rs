//! How to start a server.

use std::fmt;
use std::path::PathBuf;

use crate::TlsFiles;

/// The superuser's password when [`PgOptions::password`] is left at its default.
pub const DEFAULT_PASSWORD: &str = "sitewatch-test-password";

/// How to start a server; `PgOptions::default()` is a fast throwaway server.
#[derive(Clone)]
pub struct PgOptions {
    /// `None`: a fresh temp directory removed on drop; `Some`: kept, initialised only when it has no `PG_VERSION`.
    pub data_dir: Option<PathBuf>,
    /// `None`: a free port on 127.0.0.1.
    pub port: Option<u16>,
    /// Trade durability for speed (`fsync`, `synchronous_commit`, `full_page_writes` off); false for benchmarks.
    pub fast: bool,
    /// Serve TLS (`ssl=on`) with these files; clients may still connect without TLS.
    pub tls: Option<TlsFiles>,
    /// The password of the superuser `postgres`.
    pub password: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: None,
            fast: true,
            tls: None,
            password: DEFAULT_PASSWORD.to_owned(),
        }
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("fast", &self.fast)
            .field("tls", &self.tls)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let options = PgOptions {
            password: "hunter2".to_owned(),
            tls: Some(TlsFiles {
                cert_pem: "CERT".to_owned(),
                key_pem: "SECRET KEY".to_owned(),
            }),
            ..PgOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}

//! Finding the PostgreSQL server binaries.

use std::fs;
use std::path::{Path, PathBuf};

use crate::PgError;

/// Environment variable naming the directory that holds `initdb`, `pg_ctl`, `postgres` and `psql`.
pub const BIN_ENV: &str = "SITEWATCH_PG_BIN";

const REQUIRED_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];

/// `SITEWATCH_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `initdb` on PATH.
pub(crate) fn find_bin_dir() -> Result<PathBuf, PgError> {
    let dir = from_env()
        .or_else(newest_debian)
        .or_else(on_path)
        .ok_or_else(|| PgError::NotInstalled {
            searched: format!("${BIN_ENV}, /usr/lib/postgresql/*/bin and PATH"),
        })?;
    check_bin_dir(&dir)?;
    Ok(dir)
}

fn from_env() -> Option<PathBuf> {
    std::env::var_os(BIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn newest_debian() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn on_path() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file())
}

fn check_bin_dir(dir: &Path) -> Result<(), PgError> {
    match REQUIRED_BINARIES
        .into_iter()
        .find(|b| !dir.join(b).is_file())
    {
        Some(missing) => Err(PgError::IncompleteBinDir {
            dir: dir.to_owned(),
            missing,
        }),
        None => Ok(()),
    }
}

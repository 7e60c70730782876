//! Where the site list comes from: a CSV or JSON file, or the `websites`
//! table that the consumer's schema defines (rows with an interval, enabled;
//! a row's check options in its `checks` JSON object).

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use sitewatch_db::PgSettings;
use sitewatch_service::SecretString;

use crate::check::RawChecks;
use crate::targets::{self, RawRow, RowError, Target, TargetsError};

/// Where a table row's errors say they are: `websites:ID: reason`.
const TABLE: &str = "websites";

// `checks` as text, parsed here: a bad object is that row's error, not the whole read's.
const SELECT_TARGETS: &str = "SELECT id, url, interval_seconds, regex, timeout_seconds, \
     checks::text AS checks \
     FROM websites WHERE enabled AND interval_seconds IS NOT NULL ORDER BY id";

/// The `targets` setting as written: a file path or a `postgres://` URL.
/// It may hold a password, so it prints with the password masked.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct TargetSpec(String);

impl TargetSpec {
    /// Wraps what the operator wrote.
    pub fn new(spec: impl Into<String>) -> TargetSpec {
        TargetSpec(spec.into())
    }

    fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_postgres() {
            return f.write_str(&self.0);
        }
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.set_query(None);
                f.write_str(url.as_str())
            }
            Err(_) => f.write_str("postgres://(unparseable URL)"),
        }
    }
}

impl fmt::Debug for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetSpec({self})")
    }
}

/// A place to read the site list from.
#[derive(Debug, Clone)]
pub enum TargetSource {
    /// A CSV or JSON file, watched for changes.
    File(PathBuf),
    /// The `websites` table, re-read periodically.
    Postgres(Box<PgSettings>),
}

impl TargetSource {
    /// The source a `targets` setting names.
    pub fn from_spec(spec: &TargetSpec) -> TargetSource {
        if spec.is_postgres() {
            TargetSource::Postgres(Box::new(PgSettings {
                url: Some(SecretString::from(spec.0.clone())),
                ..PgSettings::default()
            }))
        } else {
            TargetSource::File(PathBuf::from(&spec.0))
        }
    }

    /// What to call the source in logs: a path, or the database without its password.
    pub fn describe(&self) -> String {
        match self {
            TargetSource::File(path) => path.display().to_string(),
            TargetSource::Postgres(settings) => format!("websites table ({})", settings.describe()),
        }
    }

    /// Reads and validates the list. An empty table is a valid (empty) list:
    /// sites may be added while the monitor runs.
    pub async fn load(&self) -> Result<Vec<Target>, TargetsError> {
        match self {
            TargetSource::File(path) => targets::load_file(path),
            TargetSource::Postgres(settings) => {
                let (rows, errors) =
                    read_table(settings)
                        .await
                        .map_err(|reason| TargetsError::Postgres {
                            database: settings.describe(),
                            reason,
                        })?;
                if rows.is_empty() && errors.is_empty() {
                    return Ok(Vec::new());
                }
                targets::validate(TABLE, rows, errors)
            }
        }
    }
}

/// The enabled rows, and the errors of rows whose `checks` is not an object of options.
async fn read_table(settings: &PgSettings) -> Result<(Vec<RawRow>, Vec<RowError>), String> {
    let connector = settings.connector().map_err(|e| e.to_string())?;
    let client = connector
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let rows = client.query(SELECT_TARGETS, &[]).await.map_err(|e| {
        format!("cannot read the websites table (has the consumer created the schema?): {e}")
    })?;
    let mut raw_rows = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(|e| e.to_string())?;
        let line = u64::try_from(id).unwrap_or_default();
        let interval: Option<f64> = row.try_get("interval_seconds").map_err(|e| e.to_string())?;
        let timeout: Option<f64> = row.try_get("timeout_seconds").map_err(|e| e.to_string())?;
        let checks: Option<String> = row.try_get("checks").map_err(|e| e.to_string())?;
        let checks = match checks.as_deref().map(RawChecks::from_table) {
            None => RawChecks::default(),
            Some(Ok(checks)) => checks,
            Some(Err(reason)) => {
                errors.push(targets::row_error(TABLE, line, reason));
                continue;
            }
        };
        raw_rows.push(RawRow {
            line,
            url: row.try_get("url").map_err(|e| e.to_string())?,
            interval: interval.map(|s| s.to_string()),
            regex: row.try_get("regex").map_err(|e| e.to_string())?,
            timeout: timeout.map(|s| s.to_string()),
            checks,
            keep_id: true,
        });
    }
    Ok((raw_rows, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_spec_prints_without_its_password() {
        let spec = TargetSpec::new("postgres://monitor:hunter2@db:5432/sitewatch?sslmode=require");
        let shown = format!("{spec} {spec:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://monitor:***@db:5432/sitewatch"),
            "{shown}"
        );
        assert!(matches!(
            TargetSource::from_spec(&spec),
            TargetSource::Postgres(_)
        ));
        let file = TargetSpec::new("monitor-data/sites.csv");
        assert_eq!(file.to_string(), "monitor-data/sites.csv");
        assert!(matches!(
            TargetSource::from_spec(&file),
            TargetSource::File(_)
        ));
        assert!(!TargetSource::from_spec(&spec)
            .describe()
            .contains("hunter2"));
    }
}

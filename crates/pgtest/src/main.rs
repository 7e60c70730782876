//! The `localpg` binary: a PostgreSQL server kept in a folder of your choice,
//! for the local demo. Prints `url=...` once ready, runs until SIGTERM or
//! SIGINT, then shuts the server down cleanly; the data stays for next time.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use sitewatch_pgtest::{PgOptions, Postgres};

/// Runs PostgreSQL from the system binaries (Debian's postgresql) in a kept
/// data folder, on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "localpg", version)]
struct Cli {
    /// Data folder; created and initialised on first use, reused after
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Port on 127.0.0.1
    #[arg(long, default_value_t = 15432)]
    port: u16,
    /// Database to create if missing
    #[arg(long, default_value = "sitewatch")]
    database: String,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("localpg: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.database.is_empty()
        || !cli
            .database
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        anyhow::bail!(
            "--database {:?}: use lower-case letters, digits and _",
            cli.database
        );
    }
    // Installed before the server starts, so a Ctrl-C during start-up still stops it.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let db = Postgres::start(PgOptions {
        data_dir: Some(cli.data_dir.clone()),
        port: Some(cli.port),
        fast: false,
        ..PgOptions::default()
    })
    .with_context(|| format!("cannot start PostgreSQL in {}", cli.data_dir.display()))?;
    let exists = db
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                cli.database
            ),
        )
        .context("cannot list databases")?;
    let url = if exists == "1" {
        db.url_for(&cli.database)
    } else {
        db.create_database(&cli.database)
            .context("cannot create the database")?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "url={url}").context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")?;
    drop(out);
    let _ = signals.forever().next();
    eprintln!("localpg: stopping PostgreSQL");
    drop(db);
    Ok(())
}

//! `sitefarm`: serves the site farm on fixed or free loopback ports until SIGTERM or SIGINT.
//!
//! Prints one `name=address` line per listener on stdout once everything is ready (after the
//! CA file, if asked for, is written), so scripts can wait for the lines and read the addresses.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sitewatch_service::telemetry::{self, LogFormat};
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use tokio::signal::unix::{signal, SignalKind};

/// Local websites with set behaviours for tests, the demo and benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the plain HTTP listener (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// Address of the TLS listener whose certificate the farm's CA signed.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    https: SocketAddr,
    /// Address of the TLS listener with a self-signed certificate.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    self_signed: SocketAddr,
    /// Write the CA certificate (PEM) to this file, for clients to trust.
    #[arg(long, value_name = "FILE")]
    ca_out: Option<PathBuf>,
    /// Log filter, e.g. "info" or "debug"; `RUST_LOG` wins when set.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format, &args.log_level).context("cannot set up logging")?;

    // Installed before the addresses are printed: a script that signals as soon as it has
    // read them must reach these handlers, not the default action.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let farm = SiteFarm::start(FarmOptions {
        http: args.http,
        https: args.https,
        self_signed: args.self_signed,
    })
    .await
    .context("cannot start the site farm")?;

    if let Some(path) = &args.ca_out {
        tokio::fs::write(path, farm.ca_pem())
            .await
            .with_context(|| format!("cannot write the CA certificate to {}", path.display()))?;
    }

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "http={}", farm.http_addr())
        .and_then(|()| writeln!(stdout, "https={}", farm.https_addr()))
        .and_then(|()| writeln!(stdout, "self-signed={}", farm.self_signed_addr()))
        .and_then(|()| stdout.flush())
        .context("cannot print the listener addresses")?;
    drop(stdout);

    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT received; stopping"),
    }
    farm.shutdown().await;
    Ok(())
}

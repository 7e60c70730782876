//! The `broker` binary: starts the mock cluster (behind a TCP or TLS front if
//! asked), prints `bootstrap=HOST:PORT` on stdout, and runs until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sitewatch_broker::{Advertised, Broker, BrokerOptions, FrontOptions, TlsFiles};
use sitewatch_service::settings::LogSettings;
use sitewatch_service::{shutdown, telemetry};

/// A local Kafka-protocol broker (librdkafka's mock cluster) for the demo and
/// end-to-end tests. Data lives in memory only.
#[derive(Debug, Parser)]
#[command(name = "broker", version)]
struct Cli {
    /// Topic to create, repeatable
    #[arg(long = "topic", default_value = "website-metrics", value_name = "NAME")]
    topics: Vec<String>,
    /// Partitions of each topic
    #[arg(long, default_value_t = 6, value_name = "N")]
    partitions: i32,
    /// Brokers in the cluster
    #[arg(long, default_value_t = 1, value_name = "N")]
    brokers: i32,
    /// Accept clients on ADDR (e.g. 0.0.0.0:9092) and forward them to the mock
    /// brokers, broker i (from 0) on port + i; without it clients connect to
    /// the mock brokers on 127.0.0.1 directly
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address the brokers advertise in metadata (e.g. broker:9092), broker i
    /// on port + i [default: the listen address, 127.0.0.1 for 0.0.0.0]
    #[arg(long, value_name = "HOST:PORT", requires = "listen")]
    advertise: Option<Advertised>,
    /// Serve TLS on the listen address with this PEM certificate chain
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this PEM CA
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    log: LogSettings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No config file here: clap's own parsing gives the flags, environment and defaults.
    if let Err(err) = telemetry::init(cli.log.format, &cli.log.level) {
        eprintln!("broker: error: {err}");
        return ExitCode::from(2);
    }
    match serve(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("broker: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(cli: &Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let signals = shutdown::listen()?;
        let options = BrokerOptions {
            brokers: cli.brokers,
            topics: cli.topics.clone(),
            partitions: cli.partitions,
            front: cli.listen.map(|listen| FrontOptions {
                listen,
                advertise: cli.advertise.clone(),
                tls: cli
                    .tls_cert
                    .clone()
                    .zip(cli.tls_key.clone())
                    .map(|(cert, key)| TlsFiles {
                        cert,
                        key,
                        client_ca: cli.tls_client_ca.clone(),
                    }),
            }),
        };
        let broker = Broker::start(&options).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "bootstrap={}", broker.bootstrap()).context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
        drop(out);
        tracing::info!(
            bootstrap = %broker.bootstrap(),
            fronts = ?broker.front_addrs(),
            mock = ?broker.mock_addrs(),
            tls = cli.tls_cert.is_some(),
            client_certificates = cli.tls_client_ca.is_some(),
            topics = ?options.topics,
            partitions = options.partitions,
            "broker ready"
        );
        signals.shutdown.cancelled().await;
        tracing::info!("broker stopping");
        drop(broker);
        Ok(())
    })
}

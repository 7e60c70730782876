//! The `broker` binary: starts the mock cluster, prints `bootstrap=HOST:PORT`
//! on stdout, and runs until SIGTERM or SIGINT.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sitewatch_broker::{Broker, BrokerOptions};
use sitewatch_service::settings::LogArgs;
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
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut log = LogSettings::default();
    cli.log.clone().apply(&mut log);
    if let Err(err) = telemetry::init(log.format, &log.level) {
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
        };
        let broker = Broker::start(&options)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "bootstrap={}", broker.bootstrap()).context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
        drop(out);
        tracing::info!(bootstrap = %broker.bootstrap(), topics = ?options.topics, partitions = options.partitions, "broker ready");
        signals.shutdown.cancelled().await;
        tracing::info!("broker stopping");
        drop(broker);
        Ok(())
    })
}

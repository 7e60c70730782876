//! `bench`: runs the benchmark scenarios and prints a table and a JSON summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use sitewatch_bench::{report, Options, ScenarioReport, DEFAULT_SCENARIOS, SCENARIOS};

/// Runs the benchmark scenarios against the release binaries and prints a
/// table of figures (with the goals they are held against) and a JSON summary.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The full run: the site counts and durations the goals are set at (tens of minutes).
    #[arg(long)]
    full: bool,
    /// Run only these scenarios (repeat the flag); default all but memory and soak.
    #[arg(long = "scenario", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    scenarios: Vec<String>,
    /// Repetitions whose median is reported [default: 1 quick, 3 full]
    #[arg(long)]
    runs: Option<usize>,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Scratch directory for data, logs and site lists.
    #[arg(long, default_value = "build/bench")]
    work_dir: PathBuf,
    /// How long the soak runs its faults
    #[arg(long, value_name = "MINUTES", default_value_t = 10)]
    soak_minutes: u64,
    /// Also write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Dropping the run on a signal drops the processes it started, which kills
    // them: a bench stopped with Ctrl-C or SIGTERM leaves nothing running.
    let outcome = tokio::select! {
        result = run(Cli::parse()) => result,
        signal = stop_signal() => Err(anyhow::anyhow!("stopped by {signal}; the processes it started were stopped")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first of SIGINT and SIGTERM, by name; never returns if neither can be watched.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let options = Options {
        full: cli.full,
        runs: cli.runs.unwrap_or(if cli.full { 3 } else { 1 }),
        bin_dir: cli.bin_dir,
        work_dir: cli.work_dir,
        soak_minutes: cli.soak_minutes,
    };
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("cannot create {}", options.work_dir.display()))?;
    let chosen: Vec<&str> = if cli.scenarios.is_empty() {
        DEFAULT_SCENARIOS.to_vec()
    } else {
        SCENARIOS
            .iter()
            .copied()
            .filter(|name| cli.scenarios.iter().any(|chosen| chosen == name))
            .collect()
    };
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for name in chosen {
        eprintln!("bench: running {name}");
        let report = match name {
            "ingest" => sitewatch_bench::ingest::run(&options).await?,
            "storage" => sitewatch_bench::storage::run(&options).await?,
            "status" => sitewatch_bench::status::run(&options).await?,
            "latency" => sitewatch_bench::latency::run(&options).await?,
            "schedule" => sitewatch_bench::schedule::run(&options).await?,
            "ceiling" => sitewatch_bench::ceiling::run(&options).await?,
            "peer" => sitewatch_bench::peer::run(&options).await?,
            "memory" => sitewatch_bench::memory::run(&options).await?,
            "soak" => sitewatch_bench::soak::run(&options).await?,
            _ => bail!("scenario {name} is not written yet"),
        };
        #[allow(unreachable_code)]
        reports.push(report);
    }
    let json = serde_json::json!({
        "full": options.full,
        "runs": options.runs,
        "scenarios": reports,
    });
    let json = serde_json::to_string_pretty(&json).context("cannot serialize the summary")?;
    if let Some(path) = &cli.json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{}", report::table(&reports));
        println!("{json}");
    }
    Ok(())
}

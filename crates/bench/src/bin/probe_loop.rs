//! `probe-loop`: the ceiling scenario's raw limit. GETs the given URLs round
//! robin from `--concurrency` tasks, each on a fresh connection, reads the
//! body, matches the regex and serializes a JSON line, as fast as it can; no
//! schedule, no Kafka. After `--warmup` it counts probes and its own CPU
//! (/proc/self/stat) for `--duration`, prints one `result={json}` line on
//! stdout and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use sitewatch_bench::http::{self, Connections};
use sitewatch_bench::procs;

/// Fresh-connection GETs in a loop: the fastest a probe can be made here.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// File with one URL a line, probed round robin.
    #[arg(long, value_name = "FILE")]
    urls: PathBuf,
    /// Regex looked for in each body.
    #[arg(long)]
    regex: String,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Time before counting starts (connections and allocations settle).
    #[arg(long, default_value = "2s", value_parser = humantime_secs)]
    warmup: Duration,
    /// Time counted.
    #[arg(long, default_value = "8s", value_parser = humantime_secs)]
    duration: Duration,
}

/// Seconds as `2s`, `1.5s` or `2`.
fn humantime_secs(text: &str) -> Result<Duration, String> {
    let number = text.strip_suffix('s').unwrap_or(text);
    number
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

/// What one probe prints, as the minimal equivalent of a metric.
#[derive(Debug, Serialize)]
struct Line<'a> {
    url: &'a str,
    status: Option<u16>,
    total_us: u64,
    body_bytes: usize,
    regex_matched: Option<bool>,
    error: Option<String>,
}

/// The counted window, printed as `result=...`.
#[derive(Debug, Serialize)]
struct Outcome {
    probes: u64,
    failed: u64,
    seconds: f64,
    cpu_seconds: f64,
}

#[derive(Debug, Default)]
struct Counts {
    probes: AtomicU64,
    failed: AtomicU64,
    /// Bytes of JSON made, so the serialization cannot be optimised away.
    json_bytes: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("probe-loop: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cli.urls)
        .with_context(|| format!("cannot read {}", cli.urls.display()))?;
    let urls: Arc<Vec<reqwest::Url>> = Arc::new(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| reqwest::Url::parse(l.trim()).with_context(|| format!("bad URL {l:?}")))
            .collect::<anyhow::Result<_>>()?,
    );
    anyhow::ensure!(!urls.is_empty(), "{} lists no URL", cli.urls.display());
    let regex = Arc::new(regex::bytes::Regex::new(&cli.regex).context("bad --regex")?);
    let client = http::client(Connections::Fresh)?;
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..cli.concurrency.max(1) {
        let (client, urls, regex, counts, next) = (
            client.clone(),
            Arc::clone(&urls),
            Arc::clone(&regex),
            Arc::clone(&counts),
            Arc::clone(&next),
        );
        drop(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % urls.len();
                probe(&client, &urls[i], &regex, &counts).await;
            }
        }));
    }
    tokio::time::sleep(cli.warmup).await;
    let (probes0, failed0) = (
        counts.probes.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let cpu0 = procs::cpu_seconds(std::process::id())?;
    let start = Instant::now();
    tokio::time::sleep(cli.duration).await;
    let cpu1 = procs::cpu_seconds(std::process::id())?;
    let seconds = start.elapsed().as_secs_f64();
    let outcome = Outcome {
        probes: counts.probes.load(Ordering::Relaxed) - probes0,
        failed: counts.failed.load(Ordering::Relaxed) - failed0,
        seconds,
        cpu_seconds: cpu1 - cpu0,
    };
    let json = serde_json::to_string(&outcome).context("cannot encode the result")?;
    #[allow(clippy::print_stdout)]
    {
        println!("result={json}");
    }
    eprintln!(
        "probe-loop: {} bytes of JSON lines made",
        counts.json_bytes.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One probe: GET, read the body, match, serialize.
async fn probe(
    client: &reqwest::Client,
    url: &reqwest::Url,
    regex: &regex::bytes::Regex,
    counts: &Counts,
) {
    let start = Instant::now();
    let result = async {
        let response = client.get(url.clone()).send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    let line = match &result {
        Ok((status, body)) => Line {
            url: url.as_str(),
            status: Some(*status),
            total_us: start.elapsed().as_micros() as u64,
            body_bytes: body.len(),
            regex_matched: Some(regex.is_match(body)),
            error: None,
        },
        Err(err) => Line {
            url: url.as_str(),
            status: None,
            total_us: start.elapsed().as_micros() as u64,
            body_bytes: 0,
            regex_matched: None,
            error: Some(err.to_string()),
        },
    };
    let mut json = serde_json::to_vec(&line).unwrap_or_default();
    json.push(b'\n');
    let _ = counts
        .json_bytes
        .fetch_add(json.len() as u64, Ordering::Relaxed);
    let _ = counts.probes.fetch_add(1, Ordering::Relaxed);
    if result.is_err() {
        let _ = counts.failed.fetch_add(1, Ordering::Relaxed);
    }
}

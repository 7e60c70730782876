//! What the ingest and latency scenarios share: the local broker (through
//! [`crate::procs`]), a PostgreSQL client, and the CPU time of a process tree
//! (PostgreSQL forks a backend per connection and reaps it when it closes).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::procs::Proc;

/// `path`, emptied (or created), as an absolute path.
pub(crate) fn fresh_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("cannot empty {}", path.display()))?;
    }
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::path::absolute(path).with_context(|| format!("no absolute path for {}", path.display()))
}

/// The consumer's flags for a bench run: the broker, topic and group, the
/// database by URL without TLS, JSON logs; `extra` follows them.
pub(crate) fn consumer_args<'a>(
    bootstrap: &'a str,
    topic: &'a str,
    group: &'a str,
    db_url: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        topic,
        "--group-id",
        group,
        "--postgres-url",
        db_url,
        "--postgres-sslmode",
        "disable",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    args
}

/// Database `name` on `pg`, dropped first if a previous run left it.
pub(crate) fn fresh_database(pg: &sitewatch_pgtest::Postgres, name: &str) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        pg.drop_database(name)?;
        let _ = pg.create_database(name)?;
        Ok(())
    })
    .with_context(|| format!("cannot make a fresh database {name}"))
}

/// The workspace's `broker` binary with one topic.
#[derive(Debug)]
pub(crate) struct Broker {
    /// The process.
    pub(crate) proc: Proc,
    /// Its bootstrap address.
    pub(crate) bootstrap: String,
}

impl Broker {
    /// Starts the broker with `topic` of `partitions`, logging into `log_dir/broker.log`.
    pub(crate) fn start(
        bin_dir: &Path,
        log_dir: &Path,
        topic: &str,
        partitions: i32,
    ) -> anyhow::Result<Broker> {
        let partitions = partitions.to_string();
        let mut proc = Proc::release(
            bin_dir,
            "broker",
            ["--topic", topic, "--partitions", &partitions],
            &[],
            log_dir,
        )?;
        let bootstrap = proc.wait_for_line("bootstrap=", Duration::from_secs(20))?;
        Ok(Broker { proc, bootstrap })
    }
}

/// The sum over the topic's partitions of their low and high watermarks:
/// `(0, n)` when all `n` messages produced are still there.
pub(crate) async fn topic_messages(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .context("cannot create a Kafka client")?;
        let mut sums = (0, 0);
        for partition in 0..partitions {
            let (low, high) = client
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .with_context(|| format!("cannot read the watermarks of {topic} [{partition}]"))?;
            sums = (sums.0 + low, sums.1 + high);
        }
        Ok(sums)
    })
    .await
    .context("the watermark task failed")?
}

/// A PostgreSQL client (no TLS: the server is on loopback).
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to PostgreSQL")?;
    drop(tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("bench: PostgreSQL connection ended: {err}");
        }
    }));
    Ok(client)
}

/// The pid of the server running on `data_dir` (first line of postmaster.pid).
pub(crate) fn postmaster_pid(data_dir: &Path) -> anyhow::Result<u32> {
    let file = data_dir.join("postmaster.pid");
    let text =
        fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no pid in {}", file.display()))
}

/// CPU seconds (user + system) used since it was made, by one process or a
/// process tree (the root, its live children, and the children it reaped).
#[derive(Debug)]
pub(crate) struct CpuClock {
    pid: u32,
    tree: bool,
    start: f64,
}

impl CpuClock {
    /// Counts one process.
    pub(crate) fn process(pid: u32) -> CpuClock {
        CpuClock {
            pid,
            tree: false,
            start: cpu_seconds(pid, false),
        }
    }

    /// Counts `pid` and its children, live and reaped (as the postmaster reaps its backends).
    pub(crate) fn tree(pid: u32) -> CpuClock {
        CpuClock {
            pid,
            tree: true,
            start: cpu_seconds(pid, true),
        }
    }

    /// CPU seconds used since the clock was made.
    pub(crate) fn elapsed(&self) -> f64 {
        (cpu_seconds(self.pid, self.tree) - self.start).max(0.0)
    }
}

/// Fields of /proc/PID/stat after the command name: state is [0], utime [11], stime [12], cutime [13], cstime [14].
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

fn parent_of(pid: u32) -> Option<u32> {
    let fields = stat_fields(pid)?;
    u32::try_from(*fields.get(1)?).ok()
}

fn cpu_seconds(pid: u32, tree: bool) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let Some(own) = stat_fields(pid) else {
        return 0.0;
    };
    let field = |f: &[u64], i: usize| f.get(i).copied().unwrap_or(0);
    let mut total = field(&own, 11) + field(&own, 12);
    if tree {
        total += field(&own, 13) + field(&own, 14);
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if parent_of(child) == Some(pid) {
                    if let Some(f) = stat_fields(child) {
                        total += field(&f, 11) + field(&f, 12);
                    }
                }
            }
        }
    }
    total as f64 / ticks
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn this_process_uses_cpu() {
        let clock = CpuClock::process(std::process::id());
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(clock.elapsed() > 0.0);
    }
}

//! What the scenarios start and wire together: scratch directories, the
//! local broker, a durable PostgreSQL with a fresh database per run, the
//! `monitor` and `consumer` release binaries with the bench's flags, and a
//! wait that watches the processes it depends on.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use sitewatch_pgtest::{PgOptions, Postgres};
use tokio::time::Instant;

use crate::procs::{self, Proc};
use crate::Options;

/// How often [`poll_until`] checks again: often enough for the figures, seldom
/// enough that the checks cost the database nothing worth counting.
const POLL: Duration = Duration::from_millis(200);

/// `path`, emptied (or created), as an absolute path.
pub(crate) fn fresh_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("cannot empty {}", path.display()))?;
    }
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::path::absolute(path).with_context(|| format!("no absolute path for {}", path.display()))
}

/// Writes `contents` to `path` (a site list, a config file for a child).
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// The workspace's `broker` binary with one topic.
#[derive(Debug)]
pub(crate) struct Broker {
    /// The process.
    pub(crate) proc: Proc,
    /// Its bootstrap address.
    pub(crate) bootstrap: String,
    /// The topic it holds.
    pub(crate) topic: String,
}

impl Broker {
    /// Starts the broker with `topic` of `partitions`, logging into `log_dir/broker.log`.
    pub(crate) fn start(
        bin_dir: &Path,
        log_dir: &Path,
        topic: &str,
        partitions: i32,
    ) -> anyhow::Result<Broker> {
        let mut proc = Proc::release(
            bin_dir,
            "broker",
            ["--topic", topic, "--partitions", &partitions.to_string()],
            &[],
            log_dir,
        )?;
        let bootstrap = proc.wait_for_line("bootstrap=", Duration::from_secs(20))?;
        Ok(Broker {
            proc,
            bootstrap,
            topic: topic.to_owned(),
        })
    }

    /// The flags that point the monitor or the consumer at this broker's topic.
    pub(crate) fn flags(&self) -> [&str; 4] {
        [
            "--kafka-brokers",
            &self.bootstrap,
            "--kafka-topic",
            &self.topic,
        ]
    }

    /// The sum over the topic's partitions of their low and high watermarks:
    /// `(0, n)` when all `n` messages produced are still there.
    pub(crate) async fn messages(&self) -> anyhow::Result<(i64, i64)> {
        messages(&self.bootstrap, &self.topic).await
    }
}

/// The sum over `topic`'s partitions of their low and high watermarks:
/// `(0, n)` when all `n` messages produced are still there.
pub(crate) async fn messages(bootstrap: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    let marks = tokio::task::spawn_blocking(move || watermarks(&bootstrap, &topic))
        .await
        .context("the watermark task failed")??;
    Ok(marks.iter().fold((0, 0), |(lows, highs), &(_, low, high)| {
        (lows + low, highs + high)
    }))
}

/// Hands `record` to `producer`, waiting while its queue is full.
pub(crate) fn send<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> anyhow::Result<()>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((err, _)) => return Err(err).context("cannot produce a message"),
        }
    }
}

/// The (low, high) watermarks of every partition of `topic`, by partition id.
pub(crate) fn watermarks(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("cannot create a Kafka client")?;
    let timeout = Duration::from_secs(10);
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .context("cannot read the topic's metadata")?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("no topic {topic} on the broker"))?
        .partitions();
    partitions
        .iter()
        .map(|p| {
            let (low, high) = client
                .fetch_watermarks(topic, p.id(), timeout)
                .with_context(|| format!("cannot read the watermarks of {topic} [{}]", p.id()))?;
            Ok((p.id(), low, high))
        })
        .collect()
}

/// Starts the `monitor` release binary as `name` on the site list `targets`,
/// publishing to the broker's topic; `extra` flags follow.
pub(crate) fn start_monitor(
    options: &Options,
    name: &str,
    targets: &Path,
    broker: &Broker,
    extra: &[&str],
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    let targets = targets.to_string_lossy();
    let mut args = vec!["--targets", targets.as_ref()];
    args.extend(broker.flags());
    args.extend_from_slice(extra);
    let program = procs::release_binary(&options.bin_dir, "monitor")?;
    Proc::spawn(name, &program, args, &[], log_dir)
}

/// Starts the `consumer` release binary in `group` on the broker's topic,
/// writing to `db_url` without TLS, with JSON logs; `extra` flags follow.
pub(crate) fn start_consumer(
    options: &Options,
    broker: &Broker,
    group: &str,
    db_url: &str,
    extra: &[&str],
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    let program = procs::release_binary(&options.bin_dir, "consumer")?;
    start_consumer_binary(&program, broker, group, db_url, extra, log_dir)
}

/// [`start_consumer`] with the `consumer` binary at `program` (another
/// release's, say).
pub(crate) fn start_consumer_binary(
    program: &Path,
    broker: &Broker,
    group: &str,
    db_url: &str,
    extra: &[&str],
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    let mut args = broker.flags().to_vec();
    args.extend(["--group-id", group, "--log-format", "json"]);
    args.extend(["--postgres-url", db_url, "--postgres-sslmode", "disable"]);
    args.extend_from_slice(extra);
    Proc::spawn("consumer", program, args, &[], log_dir)
}

/// What the scenarios that write to PostgreSQL start first: their scratch
/// directory and a durable server that records commit times and statement
/// statistics.
#[derive(Debug)]
pub(crate) struct Store {
    /// Scratch directory of the scenario (logs, exported rows).
    pub(crate) dir: PathBuf,
    /// The server.
    pub(crate) pg: Postgres,
}

/// One run's database.
#[derive(Debug)]
pub(crate) struct Database {
    /// Its name.
    pub(crate) name: String,
    /// Its URL.
    pub(crate) url: String,
}

impl Store {
    /// Empties `work_dir/NAME` and starts the server.
    pub(crate) fn start(options: &Options, name: &str) -> anyhow::Result<Store> {
        let dir = fresh_dir(&options.work_dir.join(name))?;
        let pg = tokio::task::block_in_place(start_postgres)?;
        Ok(Store { dir, pg })
    }

    /// The database of run `run`, made afresh (dropped first if a previous run left it).
    pub(crate) fn database(&self, run: usize) -> anyhow::Result<Database> {
        self.named_database(format!("sitewatch_{run}"))
    }

    /// The database `name` (lowercase letters, digits and `_`), made afresh
    /// (dropped first if a previous run left it).
    pub(crate) fn named_database(&self, name: String) -> anyhow::Result<Database> {
        let url = tokio::task::block_in_place(|| -> anyhow::Result<String> {
            self.pg.drop_database(&name)?;
            Ok(self.pg.create_database(&name)?)
        })
        .with_context(|| format!("cannot make a fresh database {name}"))?;
        Ok(Database { name, url })
    }

    /// The pid of the server (first line of postmaster.pid), whose process tree is its CPU.
    pub(crate) fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let file = self.pg.data_dir().join("postmaster.pid");
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in {}", file.display()))
    }
}

/// Starts a durable PostgreSQL that records commit times and statement statistics.
fn start_postgres() -> anyhow::Result<Postgres> {
    let pg = Postgres::start(PgOptions {
        fast: false,
        ..PgOptions::default()
    })
    .context("cannot start PostgreSQL (scripts/setup.sh installs it)")?;
    // Both need a restart; ALTER SYSTEM keeps pgtest's command line as it is.
    let _ = pg
        .psql(
            "postgres",
            "ALTER SYSTEM SET track_commit_timestamp = on;\n\
             ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';",
        )
        .context("cannot configure PostgreSQL")?;
    pg.stop().context("cannot restart PostgreSQL")?;
    pg.start_again().context("cannot restart PostgreSQL")?;
    Ok(pg)
}

/// A PostgreSQL client on `url`.
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    sitewatch_pgtest::sql::connect(url)
        .await
        .context("cannot connect to PostgreSQL")
}

/// How the consumer is set up, as the environment (CONSUMER_*) leaves it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerShape {
    batch_rows: String,
    batch_wait: String,
    writers: String,
    write_path: String,
}

impl ConsumerShape {
    /// The consumer's defaults unless the caller's environment overrides them.
    pub(crate) fn from_env() -> ConsumerShape {
        let var = |name: &str, default: &str| {
            std::env::var(name).unwrap_or_else(|_| format!("{default} (default)"))
        };
        ConsumerShape {
            batch_rows: var("CONSUMER_BATCH_ROWS", "5000"),
            batch_wait: var("CONSUMER_BATCH_WAIT", "100ms"),
            writers: var("CONSUMER_WRITERS", "2"),
            write_path: var("CONSUMER_WRITE_PATH", "copy"),
        }
    }

    /// One line for the report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "batch_rows {}, batch_wait {}, writers {}, write_path {}",
            self.batch_rows, self.batch_wait, self.writers, self.write_path
        )
    }
}

/// Where a condition [`poll_until`] waits on stands.
#[derive(Debug)]
pub(crate) enum Progress {
    /// It holds.
    Done,
    /// Not yet; the words say how far it got, for the error at the deadline.
    Waiting(String),
}

/// Checks `check` every 200 ms until it is done. Fails when `within` has
/// passed, quoting the last progress and the logs of `watched`, or as soon as
/// one of `watched` (the processes the condition depends on) exits.
pub(crate) async fn poll_until<F, Fut>(
    what: &str,
    within: Duration,
    watched: &mut [Proc],
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Progress>>,
{
    let deadline = Instant::now() + within;
    loop {
        for proc in watched.iter_mut() {
            proc.ensure_running()
                .with_context(|| format!("while waiting for {what}"))?;
        }
        let progress = match check().await? {
            Progress::Done => return Ok(()),
            Progress::Waiting(progress) => progress,
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = watched
                .iter()
                .map(|proc| {
                    format!(
                        "log {}:\n{}",
                        proc.log().display(),
                        procs::tail(proc.log(), 20)
                    )
                })
                .collect();
            bail!(
                "no {what} within {within:?} ({progress})\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

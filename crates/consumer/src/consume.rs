//! The Kafka side: a consumer-group member polled on its own thread, handing
//! messages to the writers through a bounded channel, storing offsets only
//! after their rows are committed, and committing on revoke and at shutdown.
//!
//! librdkafka runs the rebalance callbacks inside `poll`, on this thread, so
//! they can wait for the writers without blocking the async runtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use sitewatch_kafka::{broker as kafka, BrokerErrors};
use sitewatch_service::health;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::batch::{Ack, Record};
use crate::offsets::OffsetTracker;
use crate::store::Origin;

/// How long leaving the group may take at exit before the process ends anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one `poll` waits for a message; also how often acks are applied.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long the writers may keep the queue full before the partitions are
/// paused. Until then the loop stops taking messages and waits for room:
/// librdkafka keeps what it fetched (its queue is bounded by
/// `queued.max.messages.kbytes`), whereas a pause throws that away and the
/// resume fetches it again: pausing at the first full queue held a catch-up
/// to 32k rows/s where it ran at 58k without (the bench's ingest scenario).
/// Well under `max.poll.interval.ms`, which not polling must not exceed.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// While waiting for room in the queue, how long to wait for an ack (a batch
/// committed, so the writers are about to take more) before looking again.
const ROOM_WAIT: Duration = Duration::from_millis(10);

/// State shared by the poll loop and the rebalance callbacks (same thread).
#[derive(Debug)]
struct Shared {
    tracker: OffsetTracker,
    /// Messages read but not yet taken by the writers (they are behind).
    backlog: VecDeque<Record>,
    paused: bool,
}

/// librdkafka callbacks for the group member, with what they need to drain
/// revoked partitions before committing.
pub struct GroupContext {
    topic: Arc<str>,
    shared: Mutex<Shared>,
    acks: Mutex<Receiver<Vec<Ack>>>,
    flush_now: Arc<Notify>,
    revoke_drain: Duration,
    /// Unix seconds of the last successful metadata answer from the brokers, for the health check.
    kafka_ok_at: AtomicU64,
    /// librdkafka's errors about the brokers, so a failed start can say why.
    errors: BrokerErrors,
}

impl std::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl GroupContext {
    /// Callbacks for `topic`; writers report on `acks` and are hurried by `flush_now`.
    pub fn new(
        topic: &str,
        acks: Receiver<Vec<Ack>>,
        flush_now: Arc<Notify>,
        revoke_drain: Duration,
    ) -> GroupContext {
        GroupContext {
            topic: Arc::from(topic),
            shared: Mutex::new(Shared {
                tracker: OffsetTracker::default(),
                backlog: VecDeque::new(),
                paused: false,
            }),
            acks: Mutex::new(acks),
            flush_now,
            revoke_drain,
            kafka_ok_at: AtomicU64::new(0),
            errors: BrokerErrors::default(),
        }
    }

    /// The last error librdkafka reported about the brokers.
    pub fn last_broker_error(&self) -> Option<String> {
        self.errors.last()
    }

    /// Whether the brokers answered within the last `within`.
    pub fn kafka_reachable(&self, within: Duration) -> bool {
        let last = self.kafka_ok_at.load(Ordering::Relaxed);
        unix_now().saturating_sub(last) <= within.as_secs()
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // Only this thread takes the lock; a poisoned lock means a panic already unwound here.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the offsets that acks made storable; waits up to `wait` for the first ack.
    fn apply_acks(&self, consumer: &BaseConsumer<GroupContext>, wait: Duration) {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batches = Vec::new();
        match acks.recv_timeout(wait) {
            Ok(first) => batches.push(first),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        batches.extend(acks.try_iter());
        drop(acks);
        if batches.is_empty() {
            return;
        }
        let mut shared = self.shared();
        for ack in batches.into_iter().flatten() {
            if let Some(offset) = shared.tracker.written(ack.partition, ack.epoch, ack.offset) {
                match consumer.store_offset(&self.topic, ack.partition, offset) {
                    Ok(()) => {}
                    // The partition went away between the write and now: the next owner re-reads.
                    Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                        tracing::debug!(
                            partition = ack.partition,
                            offset,
                            "partition no longer assigned; offset not stored"
                        );
                    }
                    Err(err) => {
                        tracing::warn!(partition = ack.partition, offset, error = %err, "cannot store offset")
                    }
                }
            }
        }
    }

    /// Waits until nothing handed over in `partitions` is unwritten, or `deadline`.
    fn drain(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        partitions: Option<&[i32]>,
        deadline: Instant,
    ) -> usize {
        self.flush_now.notify_one();
        loop {
            let outstanding = self.shared().tracker.outstanding(partitions);
            let now = Instant::now();
            if outstanding == 0 || now >= deadline {
                return outstanding;
            }
            self.apply_acks(consumer, (deadline - now).min(POLL_INTERVAL));
        }
    }

    fn on_revoke(&self, consumer: &BaseConsumer<GroupContext>, revoked: &TopicPartitionList) {
        let partitions = partitions_of(revoked, &self.topic);
        if consumer.assignment_lost() {
            tracing::warn!(?partitions, "partitions lost (the group moved on without us); not committing, their next owner re-reads what was not committed");
        } else {
            let left = self.drain(
                consumer,
                Some(&partitions),
                Instant::now() + self.revoke_drain,
            );
            if left > 0 {
                tracing::warn!(?partitions, unwritten = left, "revoked partitions not fully written in time; their next owner re-reads those messages (rows are idempotent)");
            }
            commit(consumer, "revoke");
        }
        let mut shared = self.shared();
        shared.tracker.revoke(partitions.iter().copied());
        // Read but never handed over: not stored, so the next owner reads them again.
        shared
            .backlog
            .retain(|r| !partitions.contains(&r.origin.partition));
        tracing::info!(?partitions, "partitions revoked");
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Commits the stored offsets synchronously; a failure is logged, not fatal,
/// because what it leaves uncommitted is only read again and rows are idempotent.
fn commit(consumer: &BaseConsumer<GroupContext>, when: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(when, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => {
            tracing::warn!(when, error = %err, "offset commit failed; uncommitted messages will be read again and skipped as duplicates")
        }
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record(&error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.errors.log(level, fac, log_message);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => self.on_revoke(consumer, list),
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // librdkafka keeps a partition paused across unassign and assign;
            // start every assigned partition fetching, and pause again below if needed.
            if let Err(err) = consumer.resume(list) {
                tracing::debug!(error = %err, "cannot resume newly assigned partitions");
            }
            let partitions = partitions_of(list, &self.topic);
            let mut shared = self.shared();
            shared.tracker.assign(partitions.iter().copied());
            // New partitions start fetching; the loop pauses them again if the writers are still behind.
            shared.paused = false;
            tracing::info!(?partitions, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => {
                tracing::debug!(error = %err, "periodic offset commit failed; the next one retries")
            }
        }
    }
}

/// What the poll loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Messages handed to the writers.
    pub handed_over: u64,
    /// Messages handed over but not written when the grace period ended.
    pub unwritten_at_exit: u64,
    /// The writers went away before shutdown (a bug or a panic): the loop stopped early.
    pub writers_gone: bool,
}

/// Polls until `shutdown`, then drains within `grace`, commits and leaves the group.
pub fn run(
    consumer: BaseConsumer<GroupContext>,
    to_writers: mpsc::Sender<Record>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> PollReport {
    let context = Arc::clone(consumer.context());
    let topic = Arc::clone(&context.topic);
    let mut report = PollReport::default();
    let mut to_writers = Some(to_writers);
    let mut last_metadata = Instant::now() - health::BEAT_EVERY;
    let mut full_since = None;
    while !shutdown.is_cancelled() {
        if last_metadata.elapsed() >= health::BEAT_EVERY {
            // Polling alone does not show that the brokers answer; a metadata request does.
            if kafka::topic_partitions(consumer.client(), &topic, Duration::from_secs(2)).is_ok() {
                context.kafka_ok_at.store(unix_now(), Ordering::Relaxed);
            }
            last_metadata = Instant::now();
        }
        context.apply_acks(&consumer, Duration::ZERO);
        if let Some(sender) = &to_writers {
            if !hand_over(&context, sender, &mut report) {
                tracing::error!("the writers stopped; stopping consumption");
                to_writers = None;
                report.writers_gone = true;
                break;
            }
        }
        if let Some(sender) = &to_writers {
            if set_paused(&consumer, &context, sender, &mut full_since) {
                // The writers are busy: leave the next messages in librdkafka's queue.
                context.apply_acks(&consumer, ROOM_WAIT);
                continue;
            }
        }
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Err(err)) => {
                tracing::warn!(error = %err, "Kafka consumer error; librdkafka retries by itself")
            }
            Some(Ok(message)) => {
                let record = Record {
                    origin: Origin {
                        topic: Arc::clone(&topic),
                        partition: message.partition(),
                        offset: message.offset(),
                    },
                    epoch: 0,
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                };
                context.shared().backlog.push_back(record);
            }
        }
    }
    let deadline = Instant::now() + grace;
    stop_fetching(&consumer, &context);
    // What was already read is still handed over, as far as the writers take it in time.
    if let Some(sender) = to_writers.take() {
        while !context.shared().backlog.is_empty() && Instant::now() < deadline {
            if !hand_over(&context, &sender, &mut report) {
                break;
            }
            context.apply_acks(&consumer, POLL_INTERVAL);
            let _ = consumer.poll(Duration::ZERO);
        }
        context.shared().backlog.clear();
        // Dropping the sender tells the writers to write what they hold and finish.
    }
    let left = context.drain(&consumer, None, deadline);
    report.unwritten_at_exit = left as u64;
    if left > 0 {
        tracing::warn!(unwritten = left, "grace period over: messages not yet written keep their offsets uncommitted and will be read again");
    }
    commit(&consumer, "shutdown");
    // Leaving the group runs the revoke callback once more; with nothing
    // tracked it has nothing to wait for.
    let assigned = context.shared().tracker.assigned();
    context.shared().tracker.revoke(assigned);
    consumer.unsubscribe();
    // Leaving the group needs the brokers; when they went away too (a whole
    // stack stopping at once), librdkafka's close can wait for good. Give it a
    // few seconds on another thread, then let the process end: the group
    // drops a silent member after its session timeout, and nothing unwritten
    // was committed.
    let (closed_tx, closed) = std::sync::mpsc::channel();
    let _ = std::thread::spawn(move || {
        drop(consumer);
        let _ = closed_tx.send(());
    });
    if closed.recv_timeout(CLOSE_TIMEOUT).is_err() {
        tracing::warn!(timeout = ?CLOSE_TIMEOUT, "leaving the consumer group did not finish (brokers unreachable?); exiting anyway");
    }
    report
}

/// Moves the backlog into the channel as far as it has room; false if the writers are gone.
fn hand_over(
    context: &GroupContext,
    sender: &mpsc::Sender<Record>,
    report: &mut PollReport,
) -> bool {
    let mut shared = context.shared();
    while let Some(mut record) = shared.backlog.pop_front() {
        let (partition, offset) = (record.origin.partition, record.origin.offset);
        // A record of a partition revoked meanwhile is dropped: its next owner reads it.
        let Some(epoch) = shared.tracker.epoch(partition) else {
            continue;
        };
        record.epoch = epoch;
        match sender.try_send(record) {
            Ok(()) => {
                // The ack cannot overtake this: acks are applied on this thread, under this lock.
                let _ = shared.tracker.hand_over(partition, offset);
                report.handed_over += 1;
            }
            Err(TrySendError::Full(record)) => {
                shared.backlog.push_front(record);
                return true;
            }
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    true
}

/// Pauses the assignment once the writers have left the queue full for
/// [`PAUSE_AFTER`] (PostgreSQL slow or down), and resumes once they have taken
/// the backlog and half the queue is free again: resuming at the first free
/// slot would pause again at once, and each pause makes librdkafka drop what
/// it had fetched. Returns true while the queue is full but the partitions
/// are not paused: then the caller waits for room instead of polling.
fn set_paused(
    consumer: &BaseConsumer<GroupContext>,
    context: &GroupContext,
    sender: &mpsc::Sender<Record>,
    full_since: &mut Option<Instant>,
) -> bool {
    let mut shared = context.shared();
    let full = !shared.backlog.is_empty();
    let waited = if full {
        full_since.get_or_insert_with(Instant::now).elapsed()
    } else {
        *full_since = None;
        Duration::ZERO
    };
    let behind = if shared.paused {
        full || sender.capacity() < sender.max_capacity() / 2
    } else {
        full && waited >= PAUSE_AFTER
    };
    if behind != shared.paused {
        match consumer.assignment() {
            Ok(assignment) => {
                let result = if behind {
                    tracing::warn!("writers are behind (PostgreSQL slow or down?): pausing partitions; polling goes on to stay in the group");
                    consumer.pause(&assignment)
                } else {
                    tracing::info!("writers caught up: resuming partitions");
                    consumer.resume(&assignment)
                };
                match result {
                    Ok(()) => shared.paused = behind,
                    Err(err) => tracing::warn!(error = %err, "cannot pause or resume partitions"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the assignment to pause or resume it");
            }
        }
    }
    // Past PAUSE_AFTER without a pause (it failed), poll anyway: the group needs it.
    full && !shared.paused && waited < PAUSE_AFTER
}

fn stop_fetching(consumer: &BaseConsumer<GroupContext>, context: &GroupContext) {
    if let Ok(assignment) = consumer.assignment() {
        if let Err(err) = consumer.pause(&assignment) {
            tracing::debug!(error = %err, "cannot pause partitions at shutdown");
        }
    }
    context.shared().paused = true;
}

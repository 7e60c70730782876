//! The Kafka side: a consumer-group member polled on its own thread, a thin
//! pump that turns what librdkafka gives it (messages, assignments,
//! revocations) into [`Event`]s on one bounded channel, in order.
//!
//! librdkafka runs the rebalance callbacks inside `poll`, on this thread, so
//! a revocation can wait for the pipeline to write what it holds of the
//! revoked partitions before their offsets are committed, without blocking
//! the async runtime. Offsets are stored by the pipeline ([`GroupOffsets`])
//! only after their rows are committed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Message, TopicPartitionList};
use sitewatch_kafka::{broker, BrokerErrors};
use sitewatch_service::health;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::offsets::{OffsetStore, Origin};

/// How long leaving the group may take at exit before the process ends anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one `poll` waits for a message.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long the pipeline may keep the channel full before the partitions are
/// paused. Until then the pump stops taking messages and waits for room:
/// librdkafka keeps what it fetched (its queue is bounded by
/// `queued.max.messages.kbytes`), whereas a pause throws that away and the
/// resume fetches it again, which held a catch-up to half its rate.
/// Well under `max.poll.interval.ms`, which not polling must not exceed.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// While the channel is full, how long to wait before offering again.
const ROOM_WAIT: Duration = Duration::from_millis(10);

/// A message as read from Kafka, not yet decoded.
#[derive(Debug)]
pub struct Record {
    /// Where it came from.
    pub origin: Origin,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message payload.
    pub payload: Option<Vec<u8>>,
    /// Its share of the read-ahead budget in bytes, held until it is
    /// written; `None` until the pump gets it.
    pub bytes: Option<OwnedSemaphorePermit>,
}

impl Record {
    /// Bytes the message holds in memory.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// What the group member tells the pipeline, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// These partitions are ours now; their messages follow.
    Assigned(Vec<i32>),
    /// A message of an assigned partition.
    Message(Record),
    /// These partitions are no longer ours.
    Revoked {
        /// The partitions.
        partitions: Vec<i32>,
        /// Whether the group already gave them to another member: nothing of
        /// them may be committed, so there is nothing to wait for.
        lost: bool,
        /// Dropped (or sent to) once what was handed over of them is written,
        /// or the pipeline gave up waiting; the group member then commits.
        done: std_mpsc::Sender<()>,
    },
}

/// What the pump offers the pipeline and has not handed over yet, shared with
/// the rebalance callbacks (which run on the pump's thread, inside `poll`).
#[derive(Debug)]
struct Outbox {
    /// The channel to the pipeline; `None` once the pump stopped.
    events: Option<mpsc::Sender<Event>>,
    /// Bytes of messages read and not yet written that may be held at once.
    budget: Arc<Semaphore>,
    /// The budget's size.
    budget_bytes: u32,
    /// Events the channel had no room for yet, in order.
    pending: VecDeque<Event>,
    /// Whether the assignment is paused because the pipeline is behind.
    paused: bool,
}

/// How far the outbox got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    /// Everything is in the channel.
    All,
    /// The channel is full; some events wait.
    Full,
    /// The pipeline is gone.
    Closed,
}

impl Outbox {
    /// Offers `event` after what is pending.
    fn offer(&mut self, event: Event) -> Offered {
        self.pending.push_back(event);
        self.flush()
    }

    /// Moves pending events into the channel as far as it has room.
    fn flush(&mut self) -> Offered {
        let Some(sender) = self.events.as_ref().filter(|s| !s.is_closed()) else {
            return Offered::Closed;
        };
        while let Some(mut event) = self.pending.pop_front() {
            if let Event::Message(record) = &mut event {
                if record.bytes.is_none() {
                    // A message larger than the whole budget takes all of it.
                    let size = u32::try_from(record.size())
                        .unwrap_or(u32::MAX)
                        .clamp(1, self.budget_bytes);
                    match Arc::clone(&self.budget).try_acquire_many_owned(size) {
                        Ok(permit) => record.bytes = Some(permit),
                        Err(_) => {
                            self.pending.push_front(event);
                            return Offered::Full;
                        }
                    }
                }
            }
            match sender.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    return Offered::Full;
                }
                Err(TrySendError::Closed(_)) => return Offered::Closed,
            }
        }
        Offered::All
    }

    /// Whether the pipeline has taken the backlog and half the channel is free.
    fn caught_up(&self) -> bool {
        self.pending.is_empty()
            && self
                .events
                .as_ref()
                .is_some_and(|s| s.capacity() >= s.max_capacity() / 2)
    }

    /// A revocation the pipeline did not take in time: the messages of those
    /// partitions are not handed over any more (their next owner reads them),
    /// and the pipeline is not to wait for what it already has of them.
    fn expire(&mut self, revoked: &[i32]) {
        self.pending.retain(|event| match event {
            Event::Message(record) => !revoked.contains(&record.origin.partition),
            _ => true,
        });
        for event in &mut self.pending {
            if let Event::Revoked {
                partitions, lost, ..
            } = event
            {
                if partitions.as_slice() == revoked {
                    *lost = true;
                }
            }
        }
    }
}

/// librdkafka callbacks for the group member.
pub struct GroupContext {
    topic: Arc<str>,
    outbox: Mutex<Outbox>,
    revoke_drain: Duration,
    /// Unix seconds of the last successful metadata answer from the brokers, for the health check.
    kafka_ok_at: AtomicU64,
    /// librdkafka's errors about the brokers, so a failed start can say why.
    errors: BrokerErrors,
    /// Partitions owned now, for the metrics.
    assigned: AtomicUsize,
    /// Whether the assignment is paused, for the metrics: a copy of the
    /// outbox's flag that a scrape reads without the outbox's lock, which
    /// the pump may hold across a call into librdkafka.
    paused: AtomicBool,
}

impl std::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

sitewatch_kafka::forward_client_context!(GroupContext, errors);

impl GroupContext {
    /// Callbacks for `topic`, sending events on `events`, holding at most
    /// `budget_bytes` of messages not yet written.
    pub fn new(
        topic: &str,
        events: mpsc::Sender<Event>,
        budget_bytes: u32,
        revoke_drain: Duration,
    ) -> GroupContext {
        let budget_bytes = budget_bytes.clamp(1, Semaphore::MAX_PERMITS as u32);
        GroupContext {
            topic: Arc::from(topic),
            outbox: Mutex::new(Outbox {
                events: Some(events),
                budget: Arc::new(Semaphore::new(budget_bytes as usize)),
                budget_bytes,
                pending: VecDeque::new(),
                paused: false,
            }),
            revoke_drain,
            kafka_ok_at: AtomicU64::new(0),
            errors: BrokerErrors::default(),
            assigned: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
        }
    }

    /// librdkafka's errors about the brokers.
    pub fn errors(&self) -> &BrokerErrors {
        &self.errors
    }

    /// Whether the brokers answered within the last `within`.
    pub fn kafka_reachable(&self, within: Duration) -> bool {
        let last = self.kafka_ok_at.load(Ordering::Relaxed);
        unix_now().saturating_sub(last) <= within.as_secs()
    }

    /// Sets the partition gauges, before a scrape.
    pub fn collect(&self) {
        crate::measure::partitions(
            self.assigned.load(Ordering::Relaxed),
            self.paused.load(Ordering::Relaxed),
        );
    }

    /// `count` partitions left this member.
    fn released(&self, count: usize) {
        // Only the pump's thread changes the count; no update can race this one.
        let left = self.assigned.load(Ordering::Relaxed).saturating_sub(count);
        self.assigned.store(left, Ordering::Relaxed);
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // Only the pump's thread takes the lock; a poisoned lock means a panic already unwound there.
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_revoke(&self, consumer: &BaseConsumer<GroupContext>, revoked: &TopicPartitionList) {
        let partitions = partitions_of(revoked, &self.topic);
        let (done, written) = std_mpsc::channel();
        self.released(partitions.len());
        sitewatch_kafka::stats::disowned(&partitions);
        if consumer.assignment_lost() {
            crate::measure::rebalanced("lost");
            tracing::warn!(?partitions, "partitions lost (the group moved on without us); not committing, their next owner re-reads what was not committed");
            let _ = self.outbox().offer(Event::Revoked {
                partitions,
                lost: true,
                done,
            });
            return;
        }
        crate::measure::rebalanced("revoke");
        let deadline = Instant::now() + self.revoke_drain;
        let mut offered = self.outbox().offer(Event::Revoked {
            partitions: partitions.clone(),
            lost: false,
            done,
        });
        while offered == Offered::Full && Instant::now() < deadline {
            std::thread::sleep(ROOM_WAIT);
            offered = self.outbox().flush();
        }
        let drained = match offered {
            // Disconnected: the pipeline gave up waiting itself (and said so) or stopped.
            Offered::All => !matches!(
                written.recv_timeout(deadline.saturating_duration_since(Instant::now())),
                Err(std_mpsc::RecvTimeoutError::Timeout)
            ),
            Offered::Full => false,
            // The pipeline finished (shutdown): it holds nothing more.
            Offered::Closed => true,
        };
        if !drained {
            self.outbox().expire(&partitions);
            tracing::warn!(?partitions, "revoked partitions not fully written in time; their next owner re-reads those messages (rows are idempotent)");
        }
        commit(consumer, "revoke");
        tracing::info!(?partitions, "partitions revoked");
    }
}

/// Stores offsets in the group member, for the pipeline, which runs on the
/// async runtime while the pump polls.
#[derive(Debug, Clone)]
pub struct GroupOffsets {
    consumer: Weak<BaseConsumer<GroupContext>>,
    topic: Arc<str>,
}

impl GroupOffsets {
    /// Offsets of `consumer`'s topic. It holds no strong reference, so the
    /// pump alone decides when the group member closes.
    pub fn new(consumer: &Arc<BaseConsumer<GroupContext>>) -> GroupOffsets {
        GroupOffsets {
            consumer: Arc::downgrade(consumer),
            topic: Arc::clone(&consumer.context().topic),
        }
    }
}

impl OffsetStore for GroupOffsets {
    fn store(&self, partition: i32, offset: i64) {
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        match consumer.store_offset(&self.topic, partition, offset) {
            Ok(()) => {}
            // The partition went away between the write and now: the next owner re-reads.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                tracing::debug!(
                    partition,
                    offset,
                    "partition no longer assigned; offset not stored"
                );
            }
            Err(err) => tracing::warn!(partition, offset, error = %err, "cannot store offset"),
        }
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
            let partitions = partitions_of(list, &self.topic);
            crate::measure::rebalanced("assign");
            let _ = self.assigned.fetch_add(partitions.len(), Ordering::Relaxed);
            tracing::info!(?partitions, "partitions assigned");
            let mut outbox = self.outbox();
            // librdkafka keeps a partition paused across unassign and assign,
            // and with cooperative rebalancing `list` holds only the new
            // partitions: they follow the rest of the assignment, paused
            // while the pipeline is behind, fetching otherwise, so that the
            // pump's one resume later covers them all.
            let result = if outbox.paused {
                consumer.pause(list)
            } else {
                consumer.resume(list)
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "cannot pause or resume newly assigned partitions");
            }
            let _ = outbox.offer(Event::Assigned(partitions));
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

/// How the pump ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PumpReport {
    /// The pipeline went away before shutdown (a bug or a panic): the pump stopped early.
    pub pipeline_gone: bool,
    /// The pipeline had not finished when the grace period ended.
    pub pipeline_late: bool,
    /// librdkafka's fatal error (this member fenced by another with its
    /// `group.instance.id`, say), which stopped the pump early.
    pub fatal: Option<String>,
}

/// Polls until `shutdown`; then hands over what was read within `grace`,
/// waits for the pipeline to finish (`finished` disconnects), commits and
/// leaves the group.
pub fn run(
    consumer: Arc<BaseConsumer<GroupContext>>,
    shutdown: &CancellationToken,
    grace: Duration,
    finished: &std_mpsc::Receiver<()>,
) -> PumpReport {
    let context = Arc::clone(consumer.context());
    let mut report = PumpReport::default();
    let mut last_metadata = Instant::now() - health::BEAT_EVERY;
    let mut full_since = None;
    while !shutdown.is_cancelled() {
        if last_metadata.elapsed() >= health::BEAT_EVERY {
            // Polling alone does not show that the brokers answer; a metadata request does.
            if broker::topic_partitions(consumer.client(), &context.topic, Duration::from_secs(2))
                .is_ok()
            {
                context.kafka_ok_at.store(unix_now(), Ordering::Relaxed);
            }
            last_metadata = Instant::now();
        }
        let offered = context.outbox().flush();
        if offered == Offered::Closed {
            tracing::warn!("the pipeline stopped; stopping consumption");
            report.pipeline_gone = true;
            break;
        }
        if wait_for_room(&consumer, &context, offered, &mut full_since) {
            std::thread::sleep(ROOM_WAIT);
            continue;
        }
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                let reason = consumer
                    .client()
                    .fatal_error()
                    .map_or_else(|| format!("{code:?}"), |(_, reason)| reason);
                context.errors.raise_fatal(&reason);
                report.fatal = Some(reason);
                break;
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "Kafka consumer error; librdkafka retries by itself")
            }
            Some(Ok(message)) => {
                let record = Record {
                    origin: Origin {
                        topic: Arc::clone(&context.topic),
                        partition: message.partition(),
                        offset: message.offset(),
                    },
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    bytes: None,
                };
                let _ = context.outbox().offer(Event::Message(record));
            }
        }
    }
    if !report.pipeline_gone {
        report.pipeline_late = !finish(&consumer, &context, grace, finished);
    }
    close(consumer);
    report
}

/// Pauses the assignment once the pipeline has left the channel full for
/// [`PAUSE_AFTER`] (PostgreSQL slow or down), and resumes once it has taken
/// the backlog and half the channel is free again: resuming at the first free
/// slot would pause again at once, and each pause makes librdkafka drop what
/// it had fetched. Returns true while the channel is full but the partitions
/// are not paused: then the caller waits for room instead of polling.
fn wait_for_room(
    consumer: &BaseConsumer<GroupContext>,
    context: &GroupContext,
    offered: Offered,
    full_since: &mut Option<Instant>,
) -> bool {
    let mut outbox = context.outbox();
    let full = offered == Offered::Full;
    let waited = if full {
        full_since.get_or_insert_with(Instant::now).elapsed()
    } else {
        *full_since = None;
        Duration::ZERO
    };
    let behind = if outbox.paused {
        !outbox.caught_up()
    } else {
        full && waited >= PAUSE_AFTER
    };
    if behind != outbox.paused {
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
                    Ok(()) => {
                        outbox.paused = behind;
                        context.paused.store(behind, Ordering::Relaxed);
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot pause or resume partitions"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the assignment to pause or resume it");
            }
        }
    }
    // Past PAUSE_AFTER without a pause (it failed), poll anyway: the group needs it.
    full && !outbox.paused && waited < PAUSE_AFTER
}

/// Stops fetching, hands over what was already read as far as the pipeline
/// takes it within `grace`, closes the channel and waits for the pipeline to
/// write it; false if the pipeline did not finish in time.
fn finish(
    consumer: &BaseConsumer<GroupContext>,
    context: &GroupContext,
    grace: Duration,
    finished: &std_mpsc::Receiver<()>,
) -> bool {
    let deadline = Instant::now() + grace;
    if let Ok(assignment) = consumer.assignment() {
        if let Err(err) = consumer.pause(&assignment) {
            tracing::debug!(error = %err, "cannot pause partitions at shutdown");
        }
    }
    context.outbox().paused = true;
    context.paused.store(true, Ordering::Relaxed);
    loop {
        let offered = context.outbox().flush();
        if offered != Offered::Full || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(ROOM_WAIT);
        // Serves the group's callbacks meanwhile; the partitions are paused.
        let _ = consumer.poll(Duration::ZERO);
    }
    {
        let mut outbox = context.outbox();
        // Read but never handed over: not stored, so read again by the next consumer.
        outbox.pending.clear();
        // Closing the channel tells the pipeline to write what it holds and finish.
        outbox.events = None;
    }
    match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Err(std_mpsc::RecvTimeoutError::Timeout) => false,
        Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => true,
    }
}

/// Commits what was stored, leaves the group and closes the member, all
/// within [`CLOSE_TIMEOUT`]. Each step needs the brokers: with the group
/// coordinator gone (a whole stack stopping at once, a network cut) a
/// commit waits up to the session timeout and librdkafka's close can wait
/// for good. They run on another thread, and the process ends when the time
/// is up: the group drops a silent member after its session timeout, and
/// what was not committed is only read again (rows are idempotent).
fn close(consumer: Arc<BaseConsumer<GroupContext>>) {
    let (closed_tx, closed) = std_mpsc::channel();
    let _ = std::thread::spawn(move || {
        commit(&consumer, "shutdown");
        consumer.unsubscribe();
        // The pipeline's offset store holds the member only for a moment;
        // waiting until this is the last reference keeps the close on this thread.
        let mut consumer = consumer;
        loop {
            match Arc::try_unwrap(consumer) {
                Ok(member) => break drop(member),
                Err(shared) => {
                    consumer = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let _ = closed_tx.send(());
    });
    if closed.recv_timeout(CLOSE_TIMEOUT).is_err() {
        tracing::warn!(timeout = ?CLOSE_TIMEOUT, "committing and leaving the consumer group did not finish (brokers unreachable?); exiting anyway, uncommitted messages will be read again");
    }
}

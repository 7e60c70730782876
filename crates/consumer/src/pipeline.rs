//! From events to stored offsets: each message is decoded and batched, each
//! batch written through the sink by one of a bounded number of writers, and
//! an offset stored once every message before it in its partition is written.
//!
//! Events arrive in the order the group member saw them, so the offset
//! tracker needs no lock: an assignment starts a partition's epoch, its
//! messages follow, and a revocation waits here until what was handed over
//! of it is written.

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchPolicy, Batcher};
use crate::consume::Event;
use crate::decode::decode;
use crate::offsets::{Ack, OffsetStore, OffsetTracker};
use crate::sink::{Sink, Turns};
use crate::write::{write_batch, MustStop, RetryPolicy, Totals};

/// How the pipeline batches, writes and waits.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// When a batch is due.
    pub batch: BatchPolicy,
    /// Batches written at once (each holds a pooled connection).
    pub writers: usize,
    /// How long a revocation waits for the revoked partitions' writes.
    pub revoke_drain: Duration,
    /// After shutdown, how long the pipeline may take to write what it holds.
    pub shutdown_grace: Duration,
    /// How failed writes are retried.
    pub retry: RetryPolicy,
}

/// How the pipeline ended.
#[derive(Debug, Clone, Default)]
pub struct PipelineReport {
    /// Messages handed over but not written when the grace period ended;
    /// their offsets were not stored, so they are read again.
    pub unwritten: u64,
    /// Why the pipeline stopped before it was asked to, if it did.
    pub stopped: Option<MustStop>,
}

/// A revocation waiting for the revoked partitions' writes.
#[derive(Debug)]
struct Revoking {
    partitions: Vec<i32>,
    done: std_mpsc::Sender<()>,
    deadline: Instant,
}

/// Runs until the event channel closes and everything received is written,
/// or until the grace period after `shutdown` ends.
///
/// `finished` is dropped on return, which tells the group member it may
/// commit and leave.
pub async fn run<S: Sink, O: OffsetStore>(
    mut events: mpsc::Receiver<Event>,
    sink: Arc<S>,
    offsets: O,
    options: PipelineOptions,
    totals: Arc<Totals>,
    shutdown: CancellationToken,
    finished: std_mpsc::Sender<()>,
) -> PipelineReport {
    let mut tracker = OffsetTracker::default();
    let mut batcher = Batcher::new(options.batch);
    let mut turns = Turns::default();
    let mut writing: JoinSet<Result<Vec<Ack>, MustStop>> = JoinSet::new();
    let mut revoking: Option<Revoking> = None;
    let mut closed = false;
    let mut idle = true;
    let mut stop_at: Option<Instant> = None;
    let writers = options.writers.max(1);
    loop {
        // Write the batch now, however many writes are running.
        let mut urgent = false;
        let mut due = false;
        let receiving = !closed && revoking.is_none() && !batcher.is_full();
        tokio::select! {
            biased;
            Some(done) = writing.join_next() => match done {
                Ok(Ok(acks)) => {
                    let mut moved = false;
                    for ack in acks {
                        if let Some(offset) = tracker.written(ack) {
                            offsets.store(ack.partition, offset);
                            moved = true;
                        }
                    }
                    if moved {
                        totals.held.restart();
                    }
                }
                Ok(Err(stop)) => {
                    tracing::error!(error = %stop, "the consumer stops");
                    drop(finished);
                    return PipelineReport {
                        unwritten: tracker.outstanding(None) as u64,
                        stopped: Some(stop),
                    };
                }
                Err(err) => tracing::error!(error = %err, "a batch write task failed; its offsets stay unstored and will be read again"),
            },
            () = shutdown.cancelled(), if stop_at.is_none() => {
                stop_at = Some(Instant::now() + options.shutdown_grace);
            }
            event = events.recv(), if receiving => match event {
                Some(Event::Assigned(partitions)) => {
                    sink.partitions_changed();
                    tracker.assign(partitions);
                }
                Some(Event::Message(mut record)) => {
                    let _ = totals.read.fetch_add(1, Ordering::Relaxed);
                    let origin = &record.origin;
                    // A message of a partition revoked meanwhile is dropped: its next owner reads it.
                    if let Some(epoch) = tracker.hand_over(origin.partition, origin.offset) {
                        let ack = Ack { partition: origin.partition, epoch, offset: origin.offset };
                        let (bytes, budget) = (record.size(), record.bytes.take());
                        batcher.push(decode(record), ack, bytes, budget);
                    }
                }
                Some(Event::Revoked { partitions, lost: true, .. }) => {
                    sink.partitions_changed();
                    tracker.revoke(partitions);
                }
                Some(Event::Revoked { partitions, lost: false, done }) => {
                    sink.partitions_changed();
                    urgent = true;
                    revoking = Some(Revoking { partitions, done, deadline: Instant::now() + options.revoke_drain });
                }
                None => {
                    closed = true;
                    urgent = true;
                }
            },
            // While every writer is busy the deadline cannot be acted on; a finished write wakes the loop.
            () = sleep_until(batcher.deadline()), if batcher.deadline().is_some() && writing.len() < writers => due = true,
            () = sleep_until(revoking.as_ref().map(|r| r.deadline)), if revoking.is_some() => {}
            () = sleep_until(stop_at), if stop_at.is_some() => {}
        }
        let ready = batcher.is_full() || due || urgent || closed;
        if ready && !batcher.is_empty() && (writing.len() < writers || urgent || closed) {
            let batch = batcher.take();
            let mut partitions: Vec<i32> = batch.acks.iter().map(|a| a.partition).collect();
            partitions.sort_unstable();
            partitions.dedup();
            let (turn, finished) = turns.next(partitions);
            let (sink, totals) = (Arc::clone(&sink), Arc::clone(&totals));
            let retry = options.retry;
            let _ = writing.spawn(async move {
                let written = write_batch(&*sink, batch, turn, retry, &totals).await;
                if written.is_ok() {
                    finished.written();
                }
                written
            });
        }
        if let Some(r) = &revoking {
            let left = tracker.outstanding(Some(&r.partitions));
            if left == 0 || Instant::now() >= r.deadline {
                if let Some(r) = revoking.take() {
                    if left == 0 {
                        let _ = r.done.send(());
                    } else {
                        tracing::warn!(partitions = ?r.partitions, unwritten = left, "revoked partitions not fully written in time; their next owner re-reads those messages (rows are idempotent)");
                    }
                    tracker.revoke(r.partitions);
                }
            }
        }
        // Only a change of state takes the stall's lock, not every message.
        let idle_now = tracker.outstanding(None) == 0;
        if idle_now != idle {
            if idle_now {
                totals.held.moving();
            } else {
                totals.held.stuck();
            }
            idle = idle_now;
        }
        if closed && batcher.is_empty() && writing.is_empty() {
            break;
        }
        if stop_at.is_some_and(|at| Instant::now() >= at) {
            let left = tracker.outstanding(None);
            if left > 0 {
                tracing::warn!(unwritten = left, "grace period over: messages not yet written keep their offsets uncommitted and will be read again");
            }
            drop(finished);
            return PipelineReport {
                unwritten: left as u64,
                stopped: None,
            };
        }
    }
    drop(finished);
    PipelineReport::default()
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

//! Where a message came from and when its offset may be stored: the
//! highest offset below which every message handed to the writers has been
//! written.
//!
//! Batches may commit out of order, so "the offset of the last message
//! written" is not enough: an offset is storable only when every earlier
//! offset of its partition is written too. Each assignment of a partition
//! gets a new epoch, so that writes finishing after the partition was revoked
//! (and perhaps assigned back) cannot move its offset.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Where a message came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A message now stored for good (as a row or a dead letter), quoting the
/// epoch of its partition's assignment when it was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Partition.
    pub partition: i32,
    /// Epoch quoted when handed over.
    pub epoch: u64,
    /// Offset.
    pub offset: i64,
}

/// Where storable offsets go: the consumer group, which commits them.
pub trait OffsetStore: Send + Sync + 'static {
    /// Marks every message of `partition` up to `offset` as processed.
    fn store(&self, partition: i32, offset: i64);
}

/// Per-partition bookkeeping of messages handed to the writers.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Track>,
    next_epoch: u64,
}

#[derive(Debug)]
struct Track {
    epoch: u64,
    /// Offsets handed over and not yet storable, in increasing order, with "written" flags.
    pending: VecDeque<(i64, bool)>,
}

impl OffsetTracker {
    /// Starts tracking newly assigned partitions, each with a fresh epoch.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.next_epoch += 1;
            let _ = self.partitions.insert(
                partition,
                Track {
                    epoch: self.next_epoch,
                    pending: VecDeque::new(),
                },
            );
        }
    }

    /// Stops tracking revoked partitions; their late writes are ignored from now on.
    pub fn revoke(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            let _ = self.partitions.remove(&partition);
        }
    }

    /// The epoch of `partition`'s current assignment, or `None` if it is not ours.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.partitions.get(&partition).map(|t| t.epoch)
    }

    /// Records that `offset` of `partition` goes to the writers; returns the
    /// epoch to quote when it is written, or `None` if the partition is not ours.
    pub fn hand_over(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let track = self.partitions.get_mut(&partition)?;
        track.pending.push_back((offset, false));
        Some(track.epoch)
    }

    /// Records that the acknowledged message was written; returns the offset
    /// now storable for its partition (the last of an unbroken written
    /// prefix), if it moved.
    pub fn written(&mut self, ack: Ack) -> Option<i64> {
        let track = self.partitions.get_mut(&ack.partition)?;
        if track.epoch != ack.epoch {
            return None;
        }
        let index = track
            .pending
            .binary_search_by_key(&ack.offset, |&(o, _)| o)
            .ok()?;
        track.pending[index].1 = true;
        let mut storable = None;
        while let Some(&(o, true)) = track.pending.front() {
            storable = Some(o);
            let _ = track.pending.pop_front();
        }
        storable
    }

    /// Messages handed over and not yet written, in `partitions` (all when `None`).
    pub fn outstanding(&self, partitions: Option<&[i32]>) -> usize {
        self.partitions
            .iter()
            .filter(|(p, _)| partitions.is_none_or(|ps| ps.contains(p)))
            .map(|(_, t)| t.pending.len())
            .sum()
    }

    /// Partitions currently tracked.
    pub fn assigned(&self) -> Vec<i32> {
        let mut ps: Vec<i32> = self.partitions.keys().copied().collect();
        ps.sort_unstable();
        ps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(partition: i32, epoch: u64, offset: i64) -> Ack {
        Ack {
            partition,
            epoch,
            offset,
        }
    }

    #[test]
    fn stores_only_up_to_the_lowest_unwritten_offset() {
        let mut t = OffsetTracker::default();
        t.assign([0]);
        let epoch = (10..15)
            .map(|o| t.hand_over(0, o))
            .last()
            .flatten()
            .expect("ours");
        // A later batch commits first: nothing may be stored yet.
        assert_eq!(t.written(ack(0, epoch, 13)), None);
        assert_eq!(t.written(ack(0, epoch, 14)), None);
        assert_eq!(t.written(ack(0, epoch, 10)), Some(10));
        assert_eq!(t.written(ack(0, epoch, 12)), None, "11 is still unwritten");
        assert_eq!(
            t.written(ack(0, epoch, 11)),
            Some(14),
            "the gap closed: all of 10..=14 written"
        );
        assert_eq!(t.outstanding(None), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.assign([0, 1]);
        let e0 = t.hand_over(0, 5).expect("ours");
        let e1 = t.hand_over(1, 7).expect("ours");
        assert_ne!(e0, e1);
        assert_eq!(t.outstanding(Some(&[1])), 1);
        assert_eq!(t.written(ack(1, e1, 7)), Some(7));
        assert_eq!(t.outstanding(Some(&[1])), 0);
        assert_eq!(t.outstanding(Some(&[0])), 1);
    }

    #[test]
    fn late_writes_of_a_revoked_partition_are_ignored_even_after_it_comes_back() {
        let mut t = OffsetTracker::default();
        t.assign([3]);
        let old = t.hand_over(3, 100).expect("ours");
        t.revoke([3]);
        assert_eq!(t.hand_over(3, 101), None, "not ours any more");
        assert_eq!(t.written(ack(3, old, 100)), None);
        t.assign([3]);
        let new = t.hand_over(3, 100).expect("ours again");
        assert_ne!(old, new);
        assert_eq!(
            t.written(ack(3, old, 100)),
            None,
            "the old epoch's write cannot move the new offset"
        );
        assert_eq!(t.written(ack(3, new, 100)), Some(100));
    }

    #[test]
    fn unknown_offsets_are_ignored() {
        let mut t = OffsetTracker::default();
        t.assign([0]);
        let e = t.hand_over(0, 1).expect("ours");
        assert_eq!(t.written(ack(0, e, 2)), None);
        assert_eq!(t.written(ack(9, e, 1)), None);
        assert_eq!(t.assigned(), vec![0]);
    }
}

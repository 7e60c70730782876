//! The one place a message from Kafka becomes a row to store, or a dead
//! letter when it can never be one.

use sitewatch_metric::Metric;

use crate::consume::Record;
use crate::sink::{DeadLetter, Row};

/// A message after decoding.
// A decoded row goes straight into a batch; boxing it would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded {
    /// A metric, ready to be stored.
    Row(Row),
    /// A message that is not a metric this consumer can store.
    Dead(DeadLetter),
}

/// Decodes a message's payload as a metric.
pub fn decode(record: Record) -> Decoded {
    let Record {
        origin,
        key,
        payload,
        bytes: _,
    } = record;
    let decoded = match &payload {
        None => Err((
            "empty",
            "empty payload (a tombstone or a null message)".to_owned(),
        )),
        Some(bytes) => Metric::from_json(bytes).map_err(|e| (e.kind(), e.to_string())),
    };
    match decoded {
        Ok(metric) => Decoded::Row(Row {
            metric,
            origin,
            key,
            payload,
        }),
        Err((cause, reason)) => Decoded::Dead(DeadLetter {
            origin,
            key,
            payload,
            reason,
            cause,
        }),
    }
}

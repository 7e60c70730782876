//! librdkafka's own statistics (`statistics.interval.ms`) as Prometheus
//! metrics: each broker's round trip and errors, and for a consumer the lag
//! of each partition it owns.

use rdkafka::statistics::{Partition, Statistics};

/// How often librdkafka reports its statistics, unless the operator's
/// properties say otherwise: often enough for a lag alert over minutes,
/// rarely enough that building the report (JSON) costs nothing noticeable.
pub const STATISTICS_INTERVAL_MS: &str = "10000";

const RTT_P50: &str = "sitewatch_kafka_broker_rtt_p50_seconds";
const RTT_P99: &str = "sitewatch_kafka_broker_rtt_p99_seconds";
const TRANSMIT_ERRORS: &str = "sitewatch_kafka_broker_transmit_errors_total";
const REQUEST_TIMEOUTS: &str = "sitewatch_kafka_broker_request_timeouts_total";
const LAG: &str = "sitewatch_consumer_lag_messages";

/// Publishes `statistics` as metrics; called from a client context's `stats`
/// callback (see [`crate::forward_client_context!`]).
pub fn publish(statistics: &Statistics) {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(describe);
    // Bootstrap entries have connections and errors of their own (all of
    // them while the cluster cannot be reached at start); librdkafka's
    // internal pseudo-broker has none.
    for broker in statistics
        .brokers
        .values()
        .filter(|b| b.source != "internal")
    {
        let name = broker.name.clone();
        if let Some(rtt) = broker.rtt.as_ref().filter(|w| w.cnt > 0) {
            metrics::gauge!(RTT_P50, "broker" => name.clone()).set(seconds(rtt.p50));
            metrics::gauge!(RTT_P99, "broker" => name.clone()).set(seconds(rtt.p99));
        }
        metrics::counter!(TRANSMIT_ERRORS, "broker" => name.clone()).absolute(broker.txerrs);
        metrics::counter!(REQUEST_TIMEOUTS, "broker" => name).absolute(broker.req_timeouts);
    }
    if statistics.client_type != "consumer" {
        return;
    }
    for topic in statistics.topics.values() {
        for partition in topic.partitions.values() {
            if let Some(lag) = owned_lag(partition) {
                metrics::gauge!(LAG, "partition" => partition.partition.to_string())
                    .set(lag as f64);
            }
        }
    }
}

/// The member no longer owns `partitions`: their lag here is 0 from now on
/// (until the gauge ages out), so that summed over the group each
/// partition's lag is its new owner's alone.
pub fn disowned(partitions: &[i32]) {
    for partition in partitions {
        metrics::gauge!(LAG, "partition" => partition.to_string()).set(0.0);
    }
}

fn describe() {
    metrics::describe_gauge!(
        RTT_P50,
        metrics::Unit::Seconds,
        "Median round trip to the broker over the last statistics interval."
    );
    metrics::describe_gauge!(
        RTT_P99,
        metrics::Unit::Seconds,
        "99th percentile round trip to the broker over the last statistics interval."
    );
    metrics::describe_counter!(
        TRANSMIT_ERRORS,
        "Requests to the broker that failed to send."
    );
    metrics::describe_counter!(REQUEST_TIMEOUTS, "Requests to the broker that timed out.");
    metrics::describe_gauge!(LAG, "Messages on the partition not yet committed by this member (high watermark less committed offset), for the partitions it owns.");
}

/// The lag of a partition this member fetches: its high watermark less its
/// committed offset. `None` for librdkafka's internal partition (-1), for
/// partitions it holds metadata of but does not own, and while either
/// offset is unknown (nothing committed yet).
fn owned_lag(partition: &Partition) -> Option<i64> {
    let owned = partition.partition >= 0
        && !matches!(
            partition.fetch_state.as_str(),
            "none" | "stopping" | "stopped"
        );
    (owned && partition.consumer_lag >= 0).then_some(partition.consumer_lag)
}

fn seconds(micros: i64) -> f64 {
    micros.max(0) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(json: &str) -> Partition {
        serde_json::from_str(json).expect("a partition")
    }

    #[test]
    fn lag_counts_only_partitions_this_member_owns_with_both_offsets_known() {
        let base = |id: i32, state: &str, lag: i64| {
            let text = PARTITION
                .replace("\"partition\": 0", &format!("\"partition\": {id}"))
                .replace("\"active\"", &format!("\"{state}\""))
                .replace("\"consumer_lag\": 7", &format!("\"consumer_lag\": {lag}"));
            partition(&text)
        };
        assert_eq!(owned_lag(&base(0, "active", 7)), Some(7));
        assert_eq!(owned_lag(&base(0, "active", 0)), Some(0));
        assert_eq!(
            owned_lag(&base(-1, "active", 7)),
            None,
            "internal partition"
        );
        assert_eq!(owned_lag(&base(0, "none", 7)), None, "not owned");
        assert_eq!(owned_lag(&base(0, "stopped", 7)), None, "revoked");
        assert_eq!(
            owned_lag(&base(0, "active", -1)),
            None,
            "nothing committed yet"
        );
    }

    /// One partition of librdkafka's statistics, as it reports it.
    const PARTITION: &str = r#"{
        "partition": 0, "broker": 1, "leader": 1, "desired": true, "unknown": false,
        "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0, "xmit_msgq_bytes": 0,
        "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "active",
        "query_offset": -1001, "next_offset": 10, "app_offset": 10, "stored_offset": 10,
        "stored_leader_epoch": -1, "commited_offset": 3, "committed_offset": 3,
        "committed_leader_epoch": -1, "eof_offset": -1001, "lo_offset": 0, "hi_offset": 10,
        "ls_offset": 10, "consumer_lag": 7, "consumer_lag_stored": 0, "leader_epoch": -1,
        "txmsgs": 0, "txbytes": 0, "rxmsgs": 10, "rxbytes": 1000, "msgs": 10,
        "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0, "next_err_seq": 0,
        "acked_msgid": 0
    }"#;
}

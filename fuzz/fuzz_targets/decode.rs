//! Any bytes as a message payload: a metric or a dead letter with a reason,
//! never a panic; a metric the consumer accepts encodes to one it accepts
//! again, unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sitewatch_consumer::consume::Record;
use sitewatch_consumer::decode::{decode, Decoded};
use sitewatch_consumer::offsets::Origin;
use sitewatch_metric::Metric;

fuzz_target!(|payload: &[u8]| {
    let record = Record {
        origin: Origin {
            topic: "metrics".into(),
            partition: 0,
            offset: 0,
        },
        key: None,
        payload: Some(payload.to_vec()),
        bytes: None,
    };
    match decode(record) {
        Decoded::Row(row) => {
            let again = Metric::from_json(&row.metric.to_json())
                .expect("a metric the consumer accepted encodes to one it accepts");
            assert_eq!(again, row.metric, "a round trip changes nothing");
        }
        Decoded::Dead(dead) => assert!(!dead.reason.is_empty(), "a dead letter says why"),
    }
});

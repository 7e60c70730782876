//! The Kafka client both services make: where the brokers are and how to
//! reach them ([`settings`]: brokers, topic, a managed cluster's TLS files,
//! pass-through librdkafka properties), and what the brokers said
//! ([`broker`]: librdkafka's errors and logs forwarded to `tracing`, a
//! reachability check that says why it failed in words an operator can act on),
//! and librdkafka's statistics as Prometheus metrics ([`stats`]).

pub mod broker;
pub mod settings;
pub mod stats;

pub use broker::{BrokerErrors, Unreachable};
/// The Kafka client library, for [`forward_client_context!`]'s expansion.
pub use rdkafka;
pub use settings::{KafkaSettings, KafkaSettingsError, Properties, TlsFiles};

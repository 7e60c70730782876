//! A Kafka-protocol broker for a machine without Kafka: librdkafka's own mock
//! cluster (consumer groups, idempotent producers, commits), listening on
//! 127.0.0.1, with the pipeline's topic created up front.
//!
//! It keeps everything in memory: a restart starts with empty topics.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// What to create.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Brokers in the cluster.
    pub brokers: i32,
    /// Topics to create.
    pub topics: Vec<String>,
    /// Partitions of each topic.
    pub partitions: i32,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// librdkafka could not create the cluster.
    #[error("cannot start the mock Kafka cluster: {0}")]
    Cluster(#[source] rdkafka::error::KafkaError),
    /// A topic could not be created.
    #[error("cannot create topic {topic:?} with {partitions} partitions: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// Partitions asked for.
        partitions: i32,
        /// Why.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// A running broker; it stops when dropped.
pub struct Broker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap())
            .finish()
    }
}

impl Broker {
    /// Starts the cluster and creates the topics.
    pub fn start(options: &BrokerOptions) -> Result<Broker, BrokerError> {
        let cluster = MockCluster::new(options.brokers.max(1)).map_err(BrokerError::Cluster)?;
        for topic in &options.topics {
            cluster
                .create_topic(topic, options.partitions, 1)
                .map_err(|source| BrokerError::Topic {
                    topic: topic.clone(),
                    partitions: options.partitions,
                    source,
                })?;
        }
        Ok(Broker { cluster })
    }

    /// The bootstrap servers clients connect to, `127.0.0.1:PORT[,...]`.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

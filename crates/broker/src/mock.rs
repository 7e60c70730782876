//! librdkafka's mock cluster with the pipeline's topics, and the addresses its
//! brokers listen on and advertise.

use std::net::SocketAddr;

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};

use crate::ffi::{AdvertiseError, NativeMockCluster};
use crate::BrokerError;

/// The mock cluster; dropping it stops the brokers.
pub(crate) struct Cluster {
    native: NativeMockCluster<HostContext>,
    /// The brokers' own listeners, broker 1 first.
    listeners: Vec<SocketAddr>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts `brokers` mock brokers on 127.0.0.1 (random ports) and creates the topics.
    pub(crate) fn start(
        brokers: i32,
        topics: &[String],
        partitions: i32,
    ) -> Result<Cluster, BrokerError> {
        // No bootstrap.servers: the host client never connects anywhere. Its polling
        // thread turns librdkafka's log lines (the mock's included) into tracing events.
        let client: ThreadedProducer<HostContext> = ClientConfig::new()
            .set("client.id", "sitewatch-broker")
            .create_with_context(HostContext)
            .map_err(BrokerError::Cluster)?;
        let native = NativeMockCluster::new(client, brokers).map_err(BrokerError::Cluster)?;
        for topic in topics {
            native
                .create_topic(topic, partitions, 1)
                .map_err(|source| BrokerError::topic(topic, partitions, source))?;
        }
        let bootstrap = native.bootstrap_servers();
        let listeners = bootstrap
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<SocketAddr>, _>>()
            .map_err(|_| BrokerError::MockAddress(bootstrap.clone()))?;
        Ok(Cluster { native, listeners })
    }

    /// The brokers' own listeners, broker 1 first (librdkafka's broker ids are 1..=N).
    pub(crate) fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// Makes broker `broker_id` advertise `host:port` in metadata instead of its listener.
    pub(crate) fn advertise(
        &self,
        broker_id: i32,
        host: &str,
        port: u16,
    ) -> Result<(), AdvertiseError> {
        self.native.set_advertised_address(broker_id, host, port)
    }
}

/// The context of the client that hosts the cluster: librdkafka's logging, less its
/// warning that a client without `bootstrap.servers` cannot connect, which is the point.
struct HostContext;

impl ClientContext for HostContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "CONFWARN" && log_message.contains("bootstrap.servers") {
            return;
        }
        DefaultClientContext.log(level, fac, log_message);
    }
}

impl ProducerContext for HostContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

//! A mock Kafka broker whose every connection goes through a fault proxy.

use sitewatch_broker::{Broker, BrokerError, BrokerOptions, FrontOptions};
use tokio::net::TcpListener;

use crate::FaultProxy;

/// One mock broker that advertises the proxy in metadata, so clients come
/// back through it after the bootstrap too; both stop when dropped.
#[derive(Debug)]
pub struct BrokerBehind {
    /// The proxy every client connection passes.
    pub proxy: FaultProxy,
    // Dropped after the proxy: fields drop in order.
    broker: Broker,
}

impl BrokerBehind {
    /// Starts the broker with `topic` of `partitions`, behind a fresh proxy.
    pub async fn start(topic: &str, partitions: i32) -> Result<BrokerBehind, BrokerError> {
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let listen = |source| BrokerError::Listen {
            addr: local,
            source,
        };
        let listener = TcpListener::bind(local).await.map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;
        let advertise = addr
            .to_string()
            .parse()
            .map_err(|_| BrokerError::MockAddress(addr.to_string()))?;
        let broker = Broker::start(&BrokerOptions {
            brokers: 1,
            topics: vec![topic.to_owned()],
            partitions,
            front: Some(FrontOptions {
                listen: local,
                advertise: Some(advertise),
                tls: None,
            }),
        })
        .await?;
        let front = broker
            .front_addrs()
            .first()
            .copied()
            .ok_or_else(|| BrokerError::MockAddress(broker.bootstrap()))?;
        let proxy = FaultProxy::serve(listener, front)
            .map_err(|source| BrokerError::Listen { addr, source })?;
        Ok(BrokerBehind { proxy, broker })
    }

    /// The bootstrap servers: the proxy's address.
    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }
}

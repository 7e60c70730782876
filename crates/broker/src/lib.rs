//! A Kafka-protocol broker for a machine without Kafka: librdkafka's own mock
//! cluster (consumer groups, idempotent producers, commits) with the
//! pipeline's topics created up front.
//!
//! The mock brokers listen on 127.0.0.1 (random ports). Without a front,
//! clients use those addresses as they are. With a front ([`FrontOptions`]),
//! broker `i` (from 0) gets a TCP listener of its own on the listen address's
//! port + `i`, which forwards every connection byte for byte to the mock
//! broker, optionally terminating TLS and requiring a client certificate; and
//! the mock broker advertises `HOST:PORT + i` in metadata, so that clients
//! always come back through the front (from another container, say).
//!
//! It keeps everything in memory: a restart starts with empty topics.

mod ffi;
mod front;
mod mock;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::net::TcpListener;

pub use ffi::AdvertiseError;
pub use front::TlsError;

use front::Front;
use mock::Cluster;

/// What to create.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Brokers in the cluster (at least one).
    pub brokers: i32,
    /// Topics to create.
    pub topics: Vec<String>,
    /// Partitions of each topic.
    pub partitions: i32,
    /// A front for clients that cannot reach 127.0.0.1 of this host; `None` keeps the
    /// mock brokers' own addresses.
    pub front: Option<FrontOptions>,
}

/// Where the front listens, what the brokers advertise, and its TLS.
#[derive(Debug, Clone)]
pub struct FrontOptions {
    /// Listen address of broker 1's front; broker `i` (from 0) listens on its port + `i`.
    /// Port 0 gives every front a random port.
    pub listen: SocketAddr,
    /// Address broker 1 advertises in metadata; broker `i` advertises its port + `i`.
    /// `None` (or port 0) advertises each front's actual address, with `127.0.0.1`
    /// (or `[::1]`) for an unspecified listen address.
    pub advertise: Option<Advertised>,
    /// TLS on the front; `None` forwards plaintext.
    pub tls: Option<TlsFiles>,
}

/// The TLS server's PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
    /// When given, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// A `HOST:PORT` a broker advertises; an IPv6 host keeps its brackets (`[::1]:9092`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Host name or IP address, as clients will resolve it.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for Advertised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A `HOST:PORT` that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not HOST:PORT (a host without spaces or commas, a port 0-65535)")]
pub struct AdvertisedParseError(String);

impl FromStr for Advertised {
    type Err = AdvertisedParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AdvertisedParseError(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let valid = !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c == ',')
            // A colon only inside brackets: `::1:9092` is ambiguous.
            && (bare.is_some() || !host.contains(':'))
            && bare.is_none_or(|h| h.parse::<Ipv6Addr>().is_ok());
        if !valid {
            return Err(bad());
        }
        Ok(Advertised {
            host: host.to_owned(),
            port,
        })
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// librdkafka could not create the cluster.
    #[error("cannot start the mock Kafka cluster: {0}")]
    Cluster(#[source] rdkafka::error::KafkaError),
    /// The mock cluster's bootstrap list did not parse.
    #[error("the mock cluster's bootstrap servers {0:?} are not IP:PORT")]
    MockAddress(String),
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
    /// A port + broker index passes 65535.
    #[error("{brokers} brokers need {what} ports from {port} up, past 65535")]
    PortRange {
        /// Listen or advertised.
        what: &'static str,
        /// The first broker's port.
        port: u16,
        /// Brokers in the cluster.
        brokers: i32,
    },
    /// A front could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A mock broker's advertised address could not be set.
    #[error("cannot make broker {broker} advertise {host}:{port}: {source}")]
    Advertise {
        /// The broker id (from 1).
        broker: i32,
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: AdvertiseError,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// librdkafka's mock cluster in the calling process: one broker with `topic`
/// of `partitions`, for tests that need a Kafka peer but no broker process or
/// front. It stops when dropped.
pub fn in_process(
    topic: &str,
    partitions: i32,
) -> Result<MockCluster<'static, DefaultProducerContext>, BrokerError> {
    let cluster = MockCluster::new(1).map_err(BrokerError::Cluster)?;
    cluster
        .create_topic(topic, partitions, 1)
        .map_err(|source| BrokerError::topic(topic, partitions, source))?;
    Ok(cluster)
}

impl BrokerError {
    /// Topic `topic` of `partitions` could not be created.
    pub(crate) fn topic(
        topic: &str,
        partitions: i32,
        source: rdkafka::error::KafkaError,
    ) -> BrokerError {
        BrokerError::Topic {
            topic: topic.to_owned(),
            partitions,
            source,
        }
    }
}

/// A running broker; it stops when dropped.
#[derive(Debug)]
pub struct Broker {
    // Fields drop in order: the fronts stop before the cluster goes.
    fronts: Vec<Front>,
    cluster: Cluster,
    bootstrap: String,
}

impl Broker {
    /// Starts the cluster, creates the topics, and starts the fronts if asked.
    ///
    /// Must be called inside a tokio runtime, which then runs the fronts.
    pub async fn start(options: &BrokerOptions) -> Result<Broker, BrokerError> {
        let brokers = options.brokers.max(1);
        let Some(front) = &options.front else {
            let cluster = Cluster::start(brokers, &options.topics, options.partitions)?;
            let bootstrap = join(cluster.listeners());
            return Ok(Broker {
                fronts: Vec::new(),
                cluster,
                bootstrap,
            });
        };
        // Everything that can fail on the caller's input fails before the cluster starts.
        let tls = front
            .tls
            .as_ref()
            .map(|tls| front::tls_acceptor(&tls.cert, &tls.key, tls.client_ca.as_deref()))
            .transpose()?;
        let mut listeners = Vec::new();
        for i in 0..brokers {
            let port = match front.listen.port() {
                0 => 0,
                port => offset(port, i).ok_or(BrokerError::PortRange {
                    what: "listen",
                    port,
                    brokers,
                })?,
            };
            let addr = SocketAddr::new(front.listen.ip(), port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Listen { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| BrokerError::Listen { addr, source })?;
            listeners.push((listener, local));
        }
        let cluster = Cluster::start(brokers, &options.topics, options.partitions)?;
        let mut advertised = Vec::new();
        let mut fronts = Vec::new();
        for (i, ((listener, local), upstream)) in
            (0..brokers).zip(listeners.into_iter().zip(cluster.listeners().to_vec()))
        {
            let address = advertised_address(front.advertise.as_ref(), local, i, brokers)?;
            cluster
                .advertise(i + 1, &address.host, address.port)
                .map_err(|source| BrokerError::Advertise {
                    broker: i + 1,
                    host: address.host.clone(),
                    port: address.port,
                    source,
                })?;
            advertised.push(address.to_string());
            fronts.push(
                Front::spawn(listener, upstream, tls.clone()).map_err(|source| {
                    BrokerError::Listen {
                        addr: local,
                        source,
                    }
                })?,
            );
        }
        Ok(Broker {
            fronts,
            cluster,
            bootstrap: advertised.join(","),
        })
    }

    /// The bootstrap servers clients use, `HOST:PORT[,...]`: the advertised
    /// addresses with a front, the mock brokers' own without.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The addresses the fronts accept on, broker 1 first; empty without a front.
    pub fn front_addrs(&self) -> Vec<SocketAddr> {
        self.fronts.iter().map(Front::local_addr).collect()
    }

    /// The mock brokers' own listeners (127.0.0.1), broker 1 first.
    pub fn mock_addrs(&self) -> Vec<SocketAddr> {
        self.cluster.listeners().to_vec()
    }
}

/// What broker `i` (from 0) advertises.
fn advertised_address(
    advertise: Option<&Advertised>,
    local: SocketAddr,
    i: i32,
    brokers: i32,
) -> Result<Advertised, BrokerError> {
    let host = match advertise {
        Some(advertise) => advertise.host.clone(),
        None => match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
            IpAddr::V6(ip) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        },
    };
    let port = match advertise.map(|a| a.port) {
        None | Some(0) => local.port(),
        Some(port) => offset(port, i).ok_or(BrokerError::PortRange {
            what: "advertised",
            port,
            brokers,
        })?,
    };
    Ok(Advertised { host, port })
}

fn offset(port: u16, i: i32) -> Option<u16> {
    u16::try_from(i).ok().and_then(|i| port.checked_add(i))
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_parses_names_ipv4_and_bracketed_ipv6() {
        let parse = |s: &str| s.parse::<Advertised>().ok().map(|a| a.to_string());
        assert_eq!(parse("broker:9092").as_deref(), Some("broker:9092"));
        assert_eq!(parse("127.0.0.3:0").as_deref(), Some("127.0.0.3:0"));
        assert_eq!(parse("[::1]:9092").as_deref(), Some("[::1]:9092"));
        for bad in [
            "broker",
            ":9092",
            "broker:",
            "broker:70000",
            "::1:9092",
            "a b:1",
            "a,b:1",
            "[x]:1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ports_count_up_from_the_first_broker_and_unspecified_advertises_loopback() {
        let local: SocketAddr = "0.0.0.0:9094".parse().expect("addr");
        let given: Advertised = "broker:9092".parse().expect("addr");
        let a = advertised_address(Some(&given), local, 2, 3).expect("in range");
        assert_eq!(a.to_string(), "broker:9094");
        let a = advertised_address(None, local, 2, 3).expect("in range");
        assert_eq!(a.to_string(), "127.0.0.1:9094");
        let zero: Advertised = "broker:0".parse().expect("addr");
        let a = advertised_address(Some(&zero), local, 2, 3).expect("in range");
        assert_eq!(a.to_string(), "broker:9094");
        let top: Advertised = "broker:65535".parse().expect("addr");
        assert!(advertised_address(Some(&top), local, 1, 2).is_err());
    }
}

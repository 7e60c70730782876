//! librdkafka's mock cluster through its C API, for the one call rdkafka does
//! not wrap: changing the address a mock broker advertises in metadata
//! (`rd_kafka_mock_broker_set_host_port`).
//!
//! rdkafka's `MockCluster` keeps its cluster pointer private, so this module
//! creates and owns the cluster itself, the way `MockCluster::new` does: on a
//! client handle without `bootstrap.servers`, which therefore never connects
//! anywhere. (A client made with `test.mock.num.brokers` would expose the
//! cluster, but it also keeps a connection of its own to the cluster, which
//! goes through the front once the brokers advertise it, and fails against
//! a TLS front.)
//!
//! This is the crate's only unsafe code.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys::{rd_kafka_mock_cluster_t, RDKafkaRespErr};

/// librdkafka keeps a mock broker's advertised host in a `char[128]`, NUL included.
const MAX_HOST_LEN: usize = 127;

/// Why an advertised address could not be set.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// The host is empty, has a NUL byte or is longer than librdkafka stores.
    #[error("the host {0:?} is empty, has a NUL byte or is longer than {MAX_HOST_LEN} bytes")]
    Host(String),
}

/// A mock cluster and the client handle it belongs to; dropping it destroys both.
pub(crate) struct NativeMockCluster<C: ProducerContext + 'static> {
    /// Owned: created by `rd_kafka_mock_cluster_new`, destroyed in `drop`.
    cluster: NonNull<rd_kafka_mock_cluster_t>,
    /// The handle the cluster was created on and logs through; never read, only kept.
    /// librdkafka requires it to outlive the cluster: fields drop after `Drop::drop`
    /// has destroyed the cluster.
    _client: ThreadedProducer<C>,
}

impl<C: ProducerContext + 'static> NativeMockCluster<C> {
    /// Starts `brokers` mock brokers, each listening on 127.0.0.1 (random port), on
    /// `client`'s handle. A client without `bootstrap.servers` never connects anywhere.
    pub(crate) fn new(
        client: ThreadedProducer<C>,
        brokers: i32,
    ) -> Result<NativeMockCluster<C>, KafkaError> {
        // SAFETY: `client.client().native_ptr()` is the live `rd_kafka_t` that `client`
        // owns; `client` is stored next to the cluster and, by the field order and `Drop`
        // below, is destroyed only after the cluster, as librdkafka requires.
        let raw = unsafe {
            rdkafka_sys::rd_kafka_mock_cluster_new(client.client().native_ptr(), brokers)
        };
        let cluster = NonNull::new(raw).ok_or(KafkaError::MockCluster(RDKafkaErrorCode::Fail))?;
        Ok(NativeMockCluster {
            cluster,
            _client: client,
        })
    }

    /// The brokers' own listeners, `127.0.0.1:PORT[,...]`, broker 1 first. They do not
    /// change when the advertised addresses do.
    pub(crate) fn bootstrap_servers(&self) -> String {
        // SAFETY: `self.cluster` is live until `drop`; librdkafka returns a pointer to a
        // NUL-terminated string the cluster owns and never changes after creation, and it
        // is copied here before `self` can be dropped.
        unsafe {
            CStr::from_ptr(rdkafka_sys::rd_kafka_mock_cluster_bootstraps(
                self.cluster.as_ptr(),
            ))
        }
        .to_string_lossy()
        .into_owned()
    }

    /// Creates `topic` with `partitions` partitions of `replicas` replicas.
    pub(crate) fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replicas: i32,
    ) -> Result<(), KafkaError> {
        let c_topic = CString::new(topic)?;
        // SAFETY: `self.cluster` is live until `drop`; `c_topic` is NUL-terminated and
        // outlives the call, and librdkafka copies it (the call hands an op to the mock's
        // thread and waits for its reply).
        let err = unsafe {
            rdkafka_sys::rd_kafka_mock_topic_create(
                self.cluster.as_ptr(),
                c_topic.as_ptr(),
                partitions,
                replicas,
            )
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
            err => Err(KafkaError::MockCluster(RDKafkaErrorCode::from(err))),
        }
    }

    /// Makes mock broker `broker_id` advertise `host:port` in metadata; its
    /// listener does not move. librdkafka ignores an unknown id; brokers are 1..=N.
    pub(crate) fn set_advertised_address(
        &self,
        broker_id: i32,
        host: &str,
        port: u16,
    ) -> Result<(), AdvertiseError> {
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return Err(AdvertiseError::Host(host.to_owned()));
        }
        let c_host = CString::new(host).map_err(|_| AdvertiseError::Host(host.to_owned()))?;
        // SAFETY: `self.cluster` is live until `drop`. `c_host` is NUL-terminated and
        // outlives the call; librdkafka copies it (the length check above keeps it within
        // librdkafka's buffer) under the cluster's own lock and keeps no pointer to it.
        unsafe {
            rdkafka_sys::rd_kafka_mock_broker_set_host_port(
                self.cluster.as_ptr(),
                broker_id,
                c_host.as_ptr(),
                i32::from(port),
            );
        }
        Ok(())
    }
}

impl<C: ProducerContext + 'static> Drop for NativeMockCluster<C> {
    fn drop(&mut self) {
        // SAFETY: the cluster was created in `new`, is destroyed only here, once, and the
        // handle it belongs to (`self._client`) is still alive: fields drop after this.
        unsafe { rdkafka_sys::rd_kafka_mock_cluster_destroy(self.cluster.as_ptr()) };
    }
}

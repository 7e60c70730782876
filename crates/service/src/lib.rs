//! What `monitor` and `consumer` need to run as services: settings in layers
//! (defaults, a TOML file, environment, flags), logging, the shutdown and
//! reload signals, a health file, the HTTP endpoint for Prometheus and
//! health probes, and the TLS trust anchors both use.
//!
//! The clients they make live beside this crate: `sitewatch-kafka` (the
//! Kafka client) and `sitewatch-db` (PostgreSQL and its schema).

pub mod health;
pub mod observe;
pub mod process;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use secrecy::{ExposeSecret, SecretString};

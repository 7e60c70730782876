//! What `monitor` and `consumer` share to run as services: Kafka client
//! settings (TLS files, pass-through properties, redacted secrets), logging,
//! and the shutdown and reload signals.

pub mod health;
pub mod kafka;
pub mod postgres;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use secrecy::{ExposeSecret, SecretString};

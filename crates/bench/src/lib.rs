//! Benchmarks of the pipeline, each a scenario that starts what it needs
//! (site farm, broker, PostgreSQL, the release binaries) and reports figures.
//! `make bench` runs the quick set; `make bench ARGS=--full` the full one;
//! `make soak` the soak under faults.

pub mod ceiling;
pub mod farm;
pub mod http;
pub mod ingest;
pub mod latency;
pub mod memory;
pub mod peer;
pub mod procs;
pub mod report;
pub mod schedule;
pub mod soak;
mod stack;
pub mod status;
pub mod storage;

use std::path::PathBuf;

pub use report::{Figure, Goal, ScenarioReport};

/// How a run is shaped; every scenario reads the same options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The full run (the sizes and durations the goals are set at) rather than the quick one.
    pub full: bool,
    /// Repetitions whose median is reported, where a scenario repeats.
    pub runs: usize,
    /// Where the release binaries (`monitor`, `consumer`, `broker`, `sitefarm`, ...) are.
    pub bin_dir: PathBuf,
    /// Scratch space for this run (data directories, logs, generated site lists).
    pub work_dir: PathBuf,
    /// How long the soak runs its faults, in minutes.
    pub soak_minutes: u64,
}

/// Every scenario, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "schedule", "ceiling", "peer", "ingest", "storage", "status", "latency", "memory", "soak",
];

/// The scenarios a run without `--scenario` runs: all but the memory
/// check with 1 MB messages and the soak, which takes its own ten minutes
/// and more (`make soak`).
pub const DEFAULT_SCENARIOS: &[&str] = &[
    "schedule", "ceiling", "peer", "ingest", "storage", "status", "latency",
];

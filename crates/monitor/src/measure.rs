//! What the monitor tells Prometheus: every metric it records, named and
//! described here, and recorded through handles made once, so that a probe
//! pays a few atomic adds rather than a lookup per metric.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Histogram};
use sitewatch_metric::{ErrorKind, Metric};

use crate::publish::DeliveryReport;

const PROBES: &str = "sitewatch_monitor_probes_total";
const DURATION: &str = "sitewatch_monitor_probe_duration_seconds";
const PHASE: &str = "sitewatch_monitor_probe_phase_duration_seconds";
const LATENESS: &str = "sitewatch_monitor_schedule_lateness_seconds";
const SKIPPED: &str = "sitewatch_monitor_skipped_deadlines_total";
const IN_FLIGHT: &str = "sitewatch_monitor_probes_in_flight";
const SITES: &str = "sitewatch_monitor_sites";
const RELOADS: &str = "sitewatch_monitor_reloads_total";
const QUEUE: &str = "sitewatch_monitor_producer_queue_messages";
const ENQUEUED: &str = "sitewatch_monitor_metrics_enqueued_total";
const DELIVERIES: &str = "sitewatch_monitor_deliveries_total";

/// The `outcome` label of a probe without an error: its status class.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// The phases of a probe, as the metric's `timings` hold them.
const PHASES: [&str; 4] = ["dns", "connect", "ttfb", "body"];

/// The monitor's metrics: handles for what each probe records, and the
/// figures set at each scrape.
#[derive(Debug)]
pub struct Measures {
    /// Whether probe metrics carry a `site` label (the `metrics_per_site` setting).
    per_site: bool,
    by_status: [Counter; STATUS_CLASSES.len()],
    by_error: [Counter; ErrorKind::ALL.len()],
    duration: Histogram,
    phases: [Histogram; PHASES.len()],
    lateness: Histogram,
    skipped: Counter,
    in_flight: AtomicI64,
    sites: AtomicU64,
}

impl Measures {
    /// Describes every metric and makes the handles; call after the
    /// recorder is installed (`observe::start`), or they record nothing.
    pub fn new(per_site: bool) -> Measures {
        describe();
        Measures {
            per_site,
            by_status: STATUS_CLASSES.map(|class| metrics::counter!(PROBES, "outcome" => class)),
            by_error: ErrorKind::ALL
                .map(|kind| metrics::counter!(PROBES, "outcome" => kind.as_str())),
            duration: metrics::histogram!(DURATION),
            phases: PHASES.map(|phase| metrics::histogram!(PHASE, "phase" => phase)),
            lateness: metrics::histogram!(LATENESS),
            skipped: metrics::counter!(SKIPPED),
            in_flight: AtomicI64::new(0),
            sites: AtomicU64::new(0),
        }
    }

    /// Records one probe, as published.
    pub fn probed(&self, metric: &Metric) {
        let total = seconds(metric.timings.total_us);
        if self.per_site {
            let site = metric.url.clone();
            metrics::counter!(PROBES, "outcome" => outcome(metric), "site" => site.clone())
                .increment(1);
            metrics::histogram!(DURATION, "site" => site).record(total);
        } else {
            let counter = match &metric.error {
                Some(err) => self.by_error.get(err.kind as usize),
                None => self.by_status.get(status_class(metric.status)),
            };
            match counter {
                Some(counter) => counter.increment(1),
                // A kind missing from `ErrorKind::ALL`: counted, by name.
                None => metrics::counter!(PROBES, "outcome" => outcome(metric)).increment(1),
            }
            self.duration.record(total);
        }
        let t = &metric.timings;
        for (histogram, micros) in
            self.phases
                .iter()
                .zip([t.dns_us, t.connect_us, t.ttfb_us, t.body_us])
        {
            if let Some(micros) = micros {
                histogram.record(seconds(micros));
            }
        }
        self.lateness.record(seconds(metric.lateness_us));
        if metric.skipped_before > 0 {
            self.skipped.increment(u64::from(metric.skipped_before));
        }
    }

    /// Counts a probe in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        let _ = self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// The site list now holds `count` sites.
    pub fn sites(&self, count: usize) {
        self.sites.store(count as u64, Ordering::Relaxed);
    }

    /// Counts a reload of the site list, taken or refused.
    pub fn reloaded(&self, taken: bool) {
        let result = if taken { "ok" } else { "failed" };
        metrics::counter!(RELOADS, "result" => result).increment(1);
    }

    /// Sets the gauges and the delivery counters, before a scrape:
    /// `delivery` is what became of the metrics, `queued` the producer's queue.
    pub fn collect(&self, delivery: &DeliveryReport, queued: Option<usize>) {
        metrics::counter!(ENQUEUED).absolute(delivery.enqueued);
        metrics::counter!(DELIVERIES, "result" => "delivered").absolute(delivery.delivered);
        metrics::counter!(DELIVERIES, "result" => "failed").absolute(delivery.failed);
        metrics::gauge!(IN_FLIGHT).set(self.in_flight.load(Ordering::Relaxed) as f64);
        metrics::gauge!(SITES).set(self.sites.load(Ordering::Relaxed) as f64);
        if let Some(queued) = queued {
            metrics::gauge!(QUEUE).set(queued as f64);
        }
    }
}

/// A probe in flight; see [`Measures::in_flight`].
#[derive(Debug)]
pub struct InFlight<'a>(&'a Measures);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let _ = self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn describe() {
    for (name, help) in [
        (PROBES, "Probes made, by outcome: the status class or the error kind (and by site with metrics_per_site)."),
        (SKIPPED, "Deadlines skipped because the site's previous probe was still running."),
        (RELOADS, "Reloads of the site list, taken (result=ok) or refused (result=failed)."),
        (ENQUEUED, "Metrics handed to the producer."),
        (DELIVERIES, "Metrics Kafka confirmed (result=delivered) or that were given up on (result=failed)."),
    ] {
        metrics::describe_counter!(name, help);
    }
    for (name, help) in [
        (DURATION, "A probe's response time, from the request to the end of the body."),
        (PHASE, "A probe's time by phase: dns, connect (TLS included), ttfb (request to first byte), body."),
        (LATENESS, "How late probes started after their due time."),
    ] {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    }
    for (name, help) in [
        (IN_FLIGHT, "Probes running now."),
        (SITES, "Sites in the running site list."),
        (
            QUEUE,
            "Metrics in the producer's queue, not yet confirmed by Kafka.",
        ),
    ] {
        metrics::describe_gauge!(name, help);
    }
}

/// A probe's `outcome` label: the class of its status, or its error kind;
/// a set of a dozen values whatever the sites.
fn outcome(metric: &Metric) -> &'static str {
    match &metric.error {
        Some(err) => err.kind.as_str(),
        None => STATUS_CLASSES[status_class(metric.status)],
    }
}

/// The index of a status's class in [`STATUS_CLASSES`].
fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(100..=199) => 0,
        Some(200..=299) => 1,
        Some(300..=399) => 2,
        Some(400..=499) => 3,
        Some(500..=599) => 4,
        _ => 5,
    }
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_counter_at_its_index() {
        for (index, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, index, "{kind:?}");
        }
    }

    #[test]
    fn outcomes_are_status_classes_or_error_kinds() {
        let mut metric = Metric::example();
        metric.status = Some(503);
        assert_eq!(outcome(&metric), "5xx");
        metric.status = Some(204);
        assert_eq!(outcome(&metric), "2xx");
        metric.status = Some(999);
        assert_eq!(outcome(&metric), "other");
        metric.status = None;
        metric.error = Some(sitewatch_metric::ProbeError {
            kind: ErrorKind::Timeout,
            message: "timed out".into(),
        });
        assert_eq!(outcome(&metric), "timeout");
    }
}

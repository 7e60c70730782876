//! The site farm as a process of its own (so its CPU is not the bench's),
//! and the site lists the scenarios probe on it.
//!
//! Sites are distinct URLs on the farm's plain HTTP listener: `/site/N`
//! answers `site N ok` at once; a few sites are slow (`/slow/MS?site=N`, the
//! head waits) or fail (`/status/500?site=N`). The farm routes by path, so
//! the query only makes each URL distinct (the monitor refuses duplicates).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::procs::Proc;

/// The regex sites are checked against; it matches every `/site/N` body
/// ("site 42 ok") and no slow or failing body.
pub const REGEX: &str = "site [0-9]+ ok";

/// The running `sitefarm` binary.
#[derive(Debug)]
pub struct Farm {
    /// The process (for its CPU figures, and to stop it).
    pub proc: Proc,
    /// Address of the plain HTTP listener.
    pub http: SocketAddr,
}

impl Farm {
    /// Starts `bin_dir/sitefarm` on free loopback ports and waits until it listens.
    pub fn start(bin_dir: &Path, log_dir: &Path) -> anyhow::Result<Farm> {
        let mut proc = Proc::release(
            bin_dir,
            "sitefarm",
            ["--log-level", "warn"],
            &[("RUST_LOG", "warn")],
            log_dir,
        )?;
        let http = proc
            .wait_for_line("http=", Duration::from_secs(20))?
            .parse()
            .context("sitefarm printed an unreadable http address")?;
        Ok(Farm { proc, http })
    }

    /// URL of site `n`'s plain `/site/N` page.
    pub fn site_url(&self, n: usize) -> String {
        format!("http://{}/site/{n}", self.http)
    }
}

/// What one site of a generated list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// `/site/N` with [`REGEX`]: a 200 whose body matches.
    Hit,
    /// `/site/N` with a regex that does not match its body.
    Miss,
    /// `/site/N` with no regex.
    Plain,
    /// A head that waits [`SLOW_MS`] ms, with [`REGEX`] (no match).
    Slow,
    /// A 500, with [`REGEX`] (no match).
    Error,
}

/// Delay of a [`Behaviour::Slow`] site's head.
pub const SLOW_MS: u64 = 200;

/// A regex no farm body contains.
const MISS_REGEX: &str = "maintenance window";

impl Behaviour {
    /// The behaviour of site `n` in every generated list: per 100 sites, 50
    /// hits, 28 misses, 18 without regex, 2 slow and 2 failing, interleaved
    /// so that any stretch of sites has about the same mix.
    pub fn of(n: usize) -> Behaviour {
        match n % 100 {
            49 | 99 => Behaviour::Slow,
            25 | 75 => Behaviour::Error,
            r if r % 2 == 0 => Behaviour::Hit,
            r if r % 10 < 6 => Behaviour::Miss,
            _ => Behaviour::Plain,
        }
    }
}

/// One site of a list: its URL and regex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Full URL on the farm.
    pub url: String,
    /// The body regex, if any.
    pub regex: Option<&'static str>,
}

/// The first `count` sites on the farm at `http`, with the mix of [`Behaviour::of`].
pub fn sites(http: SocketAddr, count: usize) -> Vec<Site> {
    (0..count)
        .map(|n| {
            let (url, regex) = match Behaviour::of(n) {
                Behaviour::Hit => (format!("http://{http}/site/{n}"), Some(REGEX)),
                Behaviour::Miss => (format!("http://{http}/site/{n}"), Some(MISS_REGEX)),
                Behaviour::Plain => (format!("http://{http}/site/{n}"), None),
                Behaviour::Slow => (
                    format!("http://{http}/slow/{SLOW_MS}?site={n}"),
                    Some(REGEX),
                ),
                Behaviour::Error => (format!("http://{http}/status/500?site={n}"), Some(REGEX)),
            };
            Site { url, regex }
        })
        .collect()
}

/// `count` sites that all answer at once with a matching body (`/site/N`,
/// [`REGEX`]): the like-for-like load of the ceiling and peer scenarios.
pub fn hit_sites(http: SocketAddr, count: usize) -> Vec<Site> {
    (0..count)
        .map(|n| Site {
            url: format!("http://{http}/site/{n}"),
            regex: Some(REGEX),
        })
        .collect()
}

/// The monitor's CSV (`url,interval_seconds[,regex]`) for `sites`, each every `interval`.
pub fn monitor_csv(sites: &[Site], interval: Duration) -> String {
    // Written with enough decimals that 50,000 sites at 2,000/s is exactly 25 s, 1,000 is 0.5 s.
    let seconds = format!("{:.6}", interval.as_secs_f64());
    let mut out = String::with_capacity(sites.len() * 48);
    out.push_str("url,interval_seconds,regex\n");
    for site in sites {
        let _ = match site.regex {
            Some(regex) => writeln!(out, "{},{seconds},\"{regex}\"", site.url),
            None => writeln!(out, "{},{seconds}", site.url),
        };
    }
    out
}

/// The interval that makes `sites` sites due at `rate` probes per second.
pub fn interval_for(sites: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(sites as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_per_hundred() {
        let mut counts = std::collections::HashMap::new();
        for n in 0..100 {
            *counts.entry(Behaviour::of(n)).or_insert(0) += 1;
        }
        assert_eq!(counts[&Behaviour::Hit], 50);
        assert_eq!(counts[&Behaviour::Slow], 2);
        assert_eq!(counts[&Behaviour::Error], 2);
        assert_eq!(counts[&Behaviour::Miss], 28);
        assert_eq!(counts[&Behaviour::Plain], 18);
    }

    #[test]
    fn urls_are_distinct_and_the_regex_fits_the_body() {
        let http: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let list = sites(http, 1000);
        let distinct: std::collections::HashSet<&str> =
            list.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(distinct.len(), 1000);
        assert_eq!(list[0].url, "http://127.0.0.1:8080/site/0");
        assert_eq!(list[99].url, "http://127.0.0.1:8080/slow/200?site=99");
        let regex = regex::Regex::new(REGEX).expect("regex");
        assert!(regex.is_match("site 123 ok"));
        assert!(!regex.is_match("500 Internal Server Error"));
        assert!(!regex.is_match("slow response after 200 ms"));
        assert!(!regex::Regex::new(MISS_REGEX)
            .expect("regex")
            .is_match("site 1 ok"));
    }

    #[test]
    fn csv_rows() {
        let list = vec![
            Site {
                url: "http://h/site/0".into(),
                regex: Some(REGEX),
            },
            Site {
                url: "http://h/site/1".into(),
                regex: None,
            },
        ];
        let csv = monitor_csv(&list, interval_for(1000, 2000.0));
        assert_eq!(
            csv,
            "url,interval_seconds,regex\nhttp://h/site/0,0.500000,\"site [0-9]+ ok\"\nhttp://h/site/1,0.500000\n"
        );
    }
}

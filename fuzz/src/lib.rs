//! What the fuzz targets check of an accepted site list.

use sitewatch_monitor::targets::{parse_url, Target};

/// Every accepted target has a URL that parses again, a non-zero interval,
/// a timeout within it, and an id that carries no password.
pub fn assert_sound(targets: &[Target]) {
    for target in targets {
        assert!(
            parse_url(target.url.as_str()).is_ok(),
            "{} parses again",
            target.url
        );
        assert!(!target.interval.is_zero(), "{target:?}");
        if let Some(timeout) = target.timeout {
            assert!(timeout <= target.interval, "{target:?}");
        }
        if let Some(password) = target.url.password().filter(|p| !p.is_empty()) {
            assert!(
                !target.id.contains(&format!(":{password}@")),
                "the site id carries no password: {}",
                target.id
            );
        }
    }
}

//! Charts and badges as inline SVG, drawn on the server: the pages need no
//! JavaScript and no front-end build. Every text goes through maud, which
//! escapes it.

use maud::{html, Markup};

/// A badge as shields.io draws them: a grey label, a coloured value.
pub fn badge(label: &str, value: &str, colour: &str) -> Markup {
    // Verdana 11px averages about 7 px a character; shields pads 10 px a side.
    let width = |text: &str| 10 + 7 * text.chars().count() as u32;
    let (left, right) = (width(label), width(value));
    let total = left + right;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(total) height="20" role="img"
            aria-label={ (label) ": " (value) } {
            title { (label) ": " (value) }
            rect width=(left) height="20" fill="#555" {}
            rect x=(left) width=(right) height="20" fill=(colour) {}
            g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" {
                text x=(left / 2) y="14" { (label) }
                text x=(left + right / 2) y="14" { (value) }
            }
        }
    }
}

/// The colour of an uptime in percent: green at 99.9 and above, red below 95.
pub fn uptime_colour(pct: Option<f64>) -> &'static str {
    match pct {
        None => "#9f9f9f",
        Some(p) if p >= 99.9 => "#2da44e",
        Some(p) if p >= 99.0 => "#97ca00",
        Some(p) if p >= 95.0 => "#dfb317",
        Some(_) => "#e05d44",
    }
}

/// A small line of values (gaps where a value is missing), scaled to its
/// largest, `width` by `height` pixels.
pub fn sparkline(values: &[Option<f64>], width: u32, height: u32) -> Markup {
    let top = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    let n = values.len().max(2) - 1;
    let x = |i: usize| f64::from(width) * i as f64 / n as f64;
    let y = |v: f64| {
        let h = f64::from(height) - 2.0;
        1.0 + h - if top > 0.0 { h * v / top } else { 0.0 }
    };
    // One path, a new segment after each gap.
    let mut path = String::new();
    let mut pen_down = false;
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let op = if pen_down { 'L' } else { 'M' };
                path.push_str(&format!("{op}{:.1},{:.1} ", x(i), y(*v)));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    // A value with no neighbour draws no line: a dot shows it.
    let alone: Vec<(f64, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let before = i.checked_sub(1).and_then(|j| values[j]);
            let after = values.get(i + 1).copied().flatten();
            v.filter(|_| before.is_none() && after.is_none())
                .map(|v| (x(i), y(v)))
        })
        .collect();
    html! {
        svg class="spark" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
            role="img" aria-label="latency, hourly median" {
            path d=(path) fill="none" stroke="#0969da" stroke-width="1.5" {}
            @for (cx, cy) in alone {
                circle cx=(format!("{cx:.1}")) cy=(format!("{cy:.1}")) r="1.5" fill="#0969da" {}
            }
        }
    }
}

/// A step of a history chart: its label, its uptime, its latencies (ms).
#[derive(Debug, Clone)]
pub struct Step {
    /// What a pointer over the step shows.
    pub label: String,
    /// Uptime in percent; none without probes.
    pub uptime_pct: Option<f64>,
    /// The mean response time.
    pub avg_ms: Option<f64>,
    /// The 95th percentile.
    pub p95_ms: Option<f64>,
}

/// Availability as bars (green up, red as the share of failed probes) and
/// latency (mean and 95th percentile) as lines, over the steps in order.
pub fn history(steps: &[Step], width: u32, height: u32) -> Markup {
    let bar_h = 16.0;
    let chart_h = f64::from(height) - bar_h - 18.0;
    let n = steps.len().max(1);
    let w = f64::from(width) / n as f64;
    let top = steps
        .iter()
        .flat_map(|s| [s.avg_ms, s.p95_ms])
        .flatten()
        .fold(0.0_f64, f64::max);
    let y = |v: f64| 2.0 + chart_h - if top > 0.0 { chart_h * v / top } else { 0.0 };
    let line = |pick: fn(&Step) -> Option<f64>| {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, s) in steps.iter().enumerate() {
            match pick(s) {
                Some(v) => {
                    let op = if pen_down { 'L' } else { 'M' };
                    path.push_str(&format!("{op}{:.1},{:.1} ", w * (i as f64 + 0.5), y(v)));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        path
    };
    let bars_y = chart_h + 6.0;
    html! {
        svg class="history" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
            role="img" aria-label="availability and latency history" {
            text x="2" y="12" font-size="11" fill="#57606a" { "max " (format!("{top:.0}")) " ms" }
            path d=(line(|s| s.p95_ms)) fill="none" stroke="#bf8700" stroke-width="1.2" {}
            path d=(line(|s| s.avg_ms)) fill="none" stroke="#0969da" stroke-width="1.5" {}
            @for (i, s) in steps.iter().enumerate() {
                @let x = w * i as f64;
                @let colour = match s.uptime_pct {
                    None => "#d0d7de",
                    Some(p) if p >= 100.0 => "#2da44e",
                    Some(p) if p >= 99.0 => "#97ca00",
                    Some(p) if p >= 90.0 => "#dfb317",
                    Some(_) => "#e05d44",
                };
                rect x=(format!("{x:.1}")) y=(format!("{bars_y:.1}")) width=(format!("{:.1}", (w - 1.0).max(0.5)))
                    height=(bar_h) fill=(colour) {
                    title {
                        (s.label) ": "
                        @match s.uptime_pct {
                            Some(p) => { (format!("{p:.2}")) "% up" }
                            None => "no probes",
                        }
                        @if let Some(avg) = s.avg_ms { ", mean " (format!("{avg:.0}")) " ms" }
                    }
                }
            }
            text x="2" y=(height - 2) font-size="11" fill="#57606a" {
                "bars: availability; blue: mean latency; amber: 95th percentile"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badge_text_is_escaped_and_sized_by_its_text() {
        let svg = badge("up<time>", "99.5%", uptime_colour(Some(99.5))).into_string();
        assert!(svg.contains("up&lt;time&gt;: 99.5%"), "{svg}");
        assert!(!svg.contains("<time>"), "{svg}");
        assert!(svg.contains("fill=\"#97ca00\""), "{svg}");
        let wider = badge("uptime", "100.0%", "#000").into_string();
        let width = |svg: &str| {
            svg.split("width=\"")
                .nth(1)
                .and_then(|w| w.split('"').next())
                .and_then(|w| w.parse::<u32>().ok())
        };
        assert!(width(&wider) < width(&svg), "{wider} / {svg}");
    }

    #[test]
    fn a_sparkline_breaks_at_gaps() {
        let svg = sparkline(&[Some(1.0), Some(2.0), None, Some(2.0)], 30, 10).into_string();
        assert!(svg.contains("d=\"M0.0,5.0 L10.0,1.0 M30.0,1.0 \""), "{svg}");
    }
}

//! What a scenario measured, and how the runner prints it.

use serde::Serialize;

/// A goal a figure is held against.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The figure must not exceed this.
    AtMost(f64),
    /// The figure must reach at least this.
    AtLeast(f64),
}

impl Goal {
    /// Whether `value` meets the goal.
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Goal::AtMost(limit) => value <= limit,
            Goal::AtLeast(floor) => value >= floor,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtMost(limit) => format!("<= {}", number(limit)),
            Goal::AtLeast(floor) => format!(">= {}", number(floor)),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured, e.g. "lateness p99 (10k sites)".
    pub name: String,
    /// The value, in `unit`.
    pub value: f64,
    /// Unit, e.g. "ms", "probes/s", "x" for ratios.
    pub unit: String,
    /// The goal for this figure, if one is set.
    pub goal: Option<Goal>,
    /// Whether the goal is met (absent without a goal).
    pub met: Option<bool>,
}

impl Figure {
    /// A figure without a goal.
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            goal: None,
            met: None,
        }
    }

    /// The same figure, held against `goal`.
    #[must_use]
    pub fn goal(mut self, goal: Goal) -> Self {
        self.met = Some(goal.met_by(self.value));
        self.goal = Some(goal);
        self
    }
}

/// Everything one scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name, as given to `--scenario`.
    pub scenario: String,
    /// The figures, in the order they should print.
    pub figures: Vec<Figure>,
    /// How it was measured and what the figures mean (one line each).
    pub notes: Vec<String>,
}

impl ScenarioReport {
    /// An empty report for `scenario`.
    pub fn new(scenario: impl Into<String>) -> Self {
        ScenarioReport {
            scenario: scenario.into(),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// The reports as a plain-text table, one row per figure.
pub fn table(reports: &[ScenarioReport]) -> String {
    let mut rows = vec![[
        "scenario".to_owned(),
        "figure".to_owned(),
        "value".to_owned(),
        "goal".to_owned(),
        "".to_owned(),
    ]];
    for report in reports {
        for figure in &report.figures {
            rows.push([
                report.scenario.clone(),
                figure.name.clone(),
                format!("{} {}", number(figure.value), figure.unit),
                figure.goal.map(Goal::describe).unwrap_or_default(),
                match figure.met {
                    Some(true) => "met".to_owned(),
                    Some(false) => "MISSED".to_owned(),
                    None => String::new(),
                },
            ]);
        }
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for report in reports {
        for note in &report.notes {
            out.push_str(&format!("{}: {note}\n", report.scenario));
        }
    }
    out
}

/// The middle value (mean of the two middle ones for an even count).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A number with as many decimals as its size deserves.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn the_table_marks_missed_goals() {
        let mut report = ScenarioReport::new("ingest");
        report
            .figures
            .push(Figure::new("rows/s", 72_900.0, "rows/s").goal(Goal::AtLeast(100_000.0)));
        report
            .figures
            .push(Figure::new("ratio to COPY", 0.85, "x").goal(Goal::AtLeast(0.6)));
        let table = table(&[report]);
        assert!(table.contains("72900 rows/s  >= 100000  MISSED"), "{table}");
        assert!(table.contains("0.850 x"), "{table}");
        let ratio = table
            .lines()
            .find(|line| line.contains("ratio to COPY"))
            .unwrap_or_default();
        assert!(
            ratio.contains(">= 0.600") && ratio.ends_with(" met"),
            "{table}"
        );
    }
}

//! The run's results: Markdown for `docs/BENCHMARKS.md` (stdout) and JSON for
//! `target/bench/results.json`.

use crate::measure::Measured;
use std::fmt::Write;

#[derive(Default)]
pub struct Report {
    pub markdown: String,
    pub json: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    pub fn line(&mut self, text: &str) {
        let _ = writeln!(self.markdown, "{text}");
    }

    pub fn put(&mut self, key: &str, value: impl serde::Serialize) {
        self.json.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }

    /// A table of `direct`, `pgbouncer` and `router` rows per group (a concurrency), with the
    /// router's ratios to both baselines; `extra` adds columns per row.
    pub fn modes_table(
        &mut self,
        rows: &[Measured],
        extra_header: &[&str],
        extra: impl Fn(&Measured) -> Vec<String>,
    ) {
        let mut header = vec!["callers", "mode", "ops/s", "p50", "p95", "p99", "errors"];
        header.extend_from_slice(extra_header);
        header.extend_from_slice(&["router/direct", "router/pgbouncer"]);
        self.line(&format!("| {} |", header.join(" | ")));
        self.line(&format!("|{}", "---|".repeat(header.len())));
        let mut groups: Vec<usize> = rows.iter().map(|r| r.callers).collect();
        groups.dedup();
        for n in groups {
            let group: Vec<&Measured> = rows.iter().filter(|r| r.callers == n).collect();
            let of = |m: &str| group.iter().find(|r| r.mode == m).map(|r| r.ops_per_sec);
            for r in &group {
                let ratios = ratio_cells(r.mode, r.ops_per_sec, of("direct"), of("pgbouncer"));
                let mut cells = vec![
                    r.callers.to_string(),
                    r.mode.to_string(),
                    format!("{:.0}", r.ops_per_sec),
                    ms(r.p50_ms),
                    ms(r.p95_ms),
                    ms(r.p99_ms),
                    r.errors.to_string(),
                ];
                cells.extend(extra(r));
                self.line(&format!("| {} | {ratios} |", cells.join(" | ")));
            }
        }
        for r in rows.iter().filter(|r| r.errors > 0) {
            self.line(&format!(
                "\n{} at {} callers, first error: `{}`",
                r.mode,
                r.callers,
                r.first_error.as_deref().unwrap_or("?")
            ));
        }
        self.line("");
    }
}

/// The two ratio cells of a row: the router's `value` over direct's and PgBouncer's (empty
/// for the baselines' own rows).
pub fn ratio_cells(mode: &str, value: f64, direct: Option<f64>, bouncer: Option<f64>) -> String {
    match (mode, direct, bouncer) {
        ("router", Some(d), Some(b)) => format!("{:.2}x | {:.2}x", value / d, value / b),
        _ => " | ".into(),
    }
}

pub fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

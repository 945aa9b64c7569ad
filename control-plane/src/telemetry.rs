//! The control plane's job metrics: how long each multi-step job took and how it ended,
//! on this replica (Prometheus histograms; labels are the job kind and the outcome only).

use prometheus::{HistogramOpts, HistogramVec, Registry};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Job kinds, the `job` label's only values.
pub const JOBS: [&str; 8] = [
    "provision",
    "fleet_run",
    "backup",
    "catalog_backup",
    "restore",
    "restore_as",
    "delete",
    "purge",
];

/// Durations and outcomes of the jobs this replica ran. Cheap to clone.
#[derive(Clone)]
pub struct Jobs(Arc<Inner>);

struct Inner {
    registry: Registry,
    seconds: HistogramVec,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs::new()
    }
}

impl Jobs {
    pub fn new() -> Jobs {
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "control_plane_job_seconds",
                "Multi-step jobs this replica ran (provisioning, fleet runs, backups, restores, deletions), by kind and outcome.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["job", "outcome"],
        )
        .expect("valid histogram");
        let registry = Registry::new();
        registry
            .register(Box::new(seconds.clone()))
            .expect("registered once");
        // Every series exists from the start, so rates and alerts see zeros, not gaps.
        for job in JOBS {
            for outcome in ["ok", "error"] {
                seconds.with_label_values(&[job, outcome]);
            }
        }
        Jobs(Arc::new(Inner { registry, seconds }))
    }

    /// Runs `job` of kind `kind` and records its duration and outcome.
    pub async fn time<T, E>(
        &self,
        kind: &'static str,
        job: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        debug_assert!(JOBS.contains(&kind));
        let started = Instant::now();
        let result = job.await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.0
            .seconds
            .with_label_values(&[kind, outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The text exposition of the job metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.0.registry.gather(), &mut out)
        {
            tracing::warn!(error = %e, "cannot encode job metrics");
        }
        out
    }
}

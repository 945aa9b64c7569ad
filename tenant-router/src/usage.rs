//! Per-tenant usage counted here (gRPC calls admitted, webhook messages stored) and
//! reported to the control plane every `routes.usage_report_every_secs`. Bounded: at most
//! [`MAX_TENANTS`] tenants are counted between two reports; counts of a failed report are
//! kept for the next one.

use std::collections::HashMap;
use std::sync::Mutex;

/// Tenants counted between two reports.
pub const MAX_TENANTS: usize = 100_000;

/// Counts since the last report: tenant id -> (calls, messages).
#[derive(Default)]
pub struct UsageCounts {
    counts: Mutex<HashMap<i64, (u64, u64)>>,
}

impl UsageCounts {
    /// One admitted call of `tenant`.
    pub fn call(&self, tenant: i64) {
        self.add(tenant, 1, 0);
    }

    /// `n` messages of `tenant` stored.
    pub fn messages(&self, tenant: i64, n: u64) {
        if n > 0 {
            self.add(tenant, 0, n);
        }
    }

    fn add(&self, tenant: i64, calls: u64, messages: u64) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        if counts.len() >= MAX_TENANTS && !counts.contains_key(&tenant) {
            return;
        }
        let entry = counts.entry(tenant).or_default();
        entry.0 = entry.0.saturating_add(calls);
        entry.1 = entry.1.saturating_add(messages);
    }

    /// Everything counted so far, leaving nothing.
    pub fn take(&self) -> Vec<(i64, u64, u64)> {
        self.counts
            .lock()
            .map(|mut c| c.drain().map(|(t, (a, b))| (t, a, b)).collect())
            .unwrap_or_default()
    }

    /// Puts back counts a report could not deliver.
    pub fn restore(&self, counts: Vec<(i64, u64, u64)>) {
        for (tenant, calls, messages) in counts {
            self.add(tenant, calls, messages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_restored_on_failure() {
        let u = UsageCounts::default();
        u.call(1);
        u.call(1);
        u.messages(1, 3);
        u.messages(2, 0);
        let mut taken = u.take();
        taken.sort_unstable();
        assert_eq!(taken, vec![(1, 2, 3)]);
        assert!(u.take().is_empty());
        u.restore(taken);
        u.call(1);
        assert_eq!(u.take(), vec![(1, 3, 3)]);
    }
}

//! Per-tenant call rates: each tenant's plan allows so many calls per second across the
//! fleet; this router enforces its share of that (`limits.rate_share`) with a token bucket
//! per tenant (a one-second burst). A tenant over its rate gets `RESOURCE_EXHAUSTED` with
//! a retry hint; other tenants are not touched.

use crate::error::RouterError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tenants whose buckets are remembered; an evicted bucket starts full again.
const CAPACITY: u64 = 200_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of every tenant called lately.
pub struct RateLimits {
    buckets: moka::sync::Cache<i64, Arc<Mutex<Bucket>>>,
    share: f64,
}

impl RateLimits {
    /// Buckets for this router's `share` (0 < share <= 1) of each plan's rate.
    pub fn new(share: f64) -> RateLimits {
        RateLimits {
            buckets: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            share,
        }
    }

    /// Admits one call of `tenant` whose plan allows `per_second` calls (0: unlimited).
    pub fn admit(&self, tenant: i64, per_second: u32) -> Result<(), RouterError> {
        if per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(per_second) * self.share;
        let burst = rate.max(1.0);
        let now = Instant::now();
        let bucket = self.buckets.get_with(tenant, || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                last: now,
            }))
        });
        let mut b = bucket
            .lock()
            .map_err(|_| RouterError::Internal("rate bucket poisoned".into()))?;
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - b.tokens) / rate * 1000.0).ceil().max(1.0);
        Err(RouterError::RateLimited {
            per_second,
            retry_after_ms: wait_ms as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_rate_waits_and_others_do_not() {
        let limits = RateLimits::new(1.0);
        let admitted = (0..50).filter(|_| limits.admit(1, 10).is_ok()).count();
        assert_eq!(admitted, 10, "a one-second burst of the plan's rate");
        match limits.admit(1, 10) {
            Err(RouterError::RateLimited {
                retry_after_ms,
                per_second: 10,
            }) => {
                assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            limits.admit(2, 10).is_ok(),
            "another tenant has its own bucket"
        );
        assert!(
            (0..1000).all(|_| limits.admit(3, 0).is_ok()),
            "0 is unlimited"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(limits.admit(1, 10).is_ok(), "the bucket refills");
        // Half the fleet's rate for one of two routers.
        let half = RateLimits::new(0.5);
        assert_eq!((0..50).filter(|_| half.admit(1, 10).is_ok()).count(), 5);
    }
}

//! Prometheus metrics. Labels are bounded: method names, outcomes, cache results and server
//! names, never tenants.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The router's metrics, registered in their own registry (no global state).
pub struct Metrics {
    registry: Registry,
    /// Calls by gRPC method and outcome (`ok` or an error kind).
    pub calls: IntCounterVec,
    /// Call latency by method.
    pub call_seconds: HistogramVec,
    /// Route cache lookups by result (hit, stale, miss, negative_hit).
    pub route_cache: IntCounterVec,
    /// Route changes applied from the directory stream.
    pub route_changes: IntCounter,
    /// Pool cache lookups by result (hit, miss).
    pub pool_cache: IntCounterVec,
    /// Connections handed to calls, by whether one was open already (reused) or had to be
    /// opened (opened): the connection hit ratio; and by whom (a call or the inbox).
    pub connections_handed: IntCounterVec,
    /// Time spent waiting for a tenant connection.
    pub connection_wait: Histogram,
    /// Tenant pools open.
    pub pools_open: IntGauge,
    /// Routes cached (each counted under its slug and its id).
    pub routes_cached: IntGauge,
    /// Connections open per database server.
    pub server_connections: IntGaugeVec,
    /// Connection budget per database server.
    pub server_budget: IntGaugeVec,
    /// Webhook deliveries by outcome (ok, retry, unauthorized, bad_request, too_large).
    pub webhooks: IntCounterVec,
    /// Webhook items by kind (message, duplicate, status, skipped, malformed).
    pub webhook_items: IntCounterVec,
    /// Webhooks kept as dead letters (no tenant owns the number).
    pub dead_letters: IntCounterVec,
    /// Deliveries written to the inbox by outcome (committed, failed, full).
    pub inbox_writes: IntCounterVec,
    /// Inbox rows by what applying them did (applied, refused, failed).
    pub inbox_applies: IntCounterVec,
    /// Age of the oldest row of each server's last apply: the apply lag, per server.
    pub inbox_lag: prometheus::GaugeVec,
    /// Time one inbox apply takes (claim, the tenant's database, finish).
    pub inbox_apply_seconds: Histogram,
    /// Event streams open.
    pub event_subscribers: IntGauge,
    /// Events sent on event streams.
    pub events_streamed: IntCounter,
    /// Lease renewals by outcome (ok, failed, expired: the lease ran out unrenewed).
    pub lease_renewals: IntCounterVec,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tenant_router".into()), None)
            .expect("static prefix is valid");
        let calls = must(IntCounterVec::new(
            Opts::new("calls_total", "gRPC calls by method and outcome"),
            &["method", "outcome"],
        ));
        let call_seconds = must(HistogramVec::new(
            HistogramOpts::new("call_duration_seconds", "gRPC call latency").buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method"],
        ));
        let route_cache = must(IntCounterVec::new(
            Opts::new("route_cache_total", "route cache lookups"),
            &["result"],
        ));
        let route_changes = must(IntCounter::new(
            "route_changes_total",
            "route changes applied from the directory",
        ));
        let connections_handed = must(IntCounterVec::new(
            Opts::new(
                "connections_handed_total",
                "tenant connections handed to calls, by whether one was already open (reused) or was opened for the call (opened), and whether it went to a call (call) or to the inbox's visit of the tenant (inbox: applying deliveries, relaying the writes' events)",
            ),
            &["result", "use"],
        ));
        for r in ["reused", "opened"] {
            for u in ["call", "inbox"] {
                connections_handed.with_label_values(&[r, u]);
            }
        }
        let pool_cache = must(IntCounterVec::new(
            Opts::new("pool_cache_total", "pool cache lookups"),
            &["result"],
        ));
        let connection_wait = must(Histogram::with_opts(
            HistogramOpts::new(
                "connection_wait_seconds",
                "time waiting for a tenant connection",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
        ));
        let pools_open = must(IntGauge::new("pools_open", "tenant pools open"));
        let routes_cached = must(IntGauge::new("routes_cached", "route cache entries"));
        let server_connections = must(IntGaugeVec::new(
            Opts::new("server_connections", "connections open per database server"),
            &["server"],
        ));
        let server_budget = must(IntGaugeVec::new(
            Opts::new(
                "server_connection_budget",
                "connection budget per database server",
            ),
            &["server"],
        ));
        let webhooks = must(IntCounterVec::new(
            Opts::new("webhooks_total", "webhook deliveries by outcome"),
            &["outcome"],
        ));
        let webhook_items = must(IntCounterVec::new(
            Opts::new("webhook_items_total", "webhook items by kind"),
            &["kind"],
        ));
        let dead_letters = must(IntCounterVec::new(
            Opts::new(
                "dead_letters_total",
                "webhooks sent to the dead letters, by outcome (kept, or dropped: quota full)",
            ),
            &["outcome"],
        ));
        let inbox_writes = must(IntCounterVec::new(
            Opts::new(
                "inbox_writes_total",
                "deliveries written to the durable inbox, by outcome (committed, failed, full)",
            ),
            &["outcome"],
        ));
        let inbox_applies = must(IntCounterVec::new(
            Opts::new(
                "inbox_applies_total",
                "inbox rows by what applying them did (applied, refused, failed)",
            ),
            &["outcome"],
        ));
        let inbox_lag = must(prometheus::GaugeVec::new(
            Opts::new(
                "inbox_apply_lag_seconds",
                "age of the oldest inbox row in the last apply, per database server",
            ),
            &["server"],
        ));
        let inbox_apply_seconds = must(Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "inbox_apply_seconds",
                "time one inbox apply takes (claim, the tenant's database, finish)",
            )
            .buckets(vec![
                0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
        ));
        let event_subscribers = must(IntGauge::new(
            "event_subscribers",
            "event streams open (consumer group subscribers)",
        ));
        let events_streamed = must(IntCounter::new(
            "events_streamed_total",
            "events sent on event streams",
        ));
        let lease_renewals = must(IntCounterVec::new(
            Opts::new(
                "lease_renewals_total",
                "renewals of this router's share of the servers' budgets, by outcome (ok, failed, expired)",
            ),
            &["outcome"],
        ));
        for outcome in ["ok", "failed", "expired"] {
            lease_renewals.with_label_values(&[outcome]);
        }
        for c in [
            Box::new(webhooks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lease_renewals.clone()),
            Box::new(event_subscribers.clone()),
            Box::new(inbox_apply_seconds.clone()),
            Box::new(events_streamed.clone()),
            Box::new(inbox_writes.clone()),
            Box::new(inbox_applies.clone()),
            Box::new(inbox_lag.clone()),
            Box::new(webhook_items.clone()),
            Box::new(dead_letters.clone()),
            Box::new(calls.clone()),
            Box::new(call_seconds.clone()),
            Box::new(route_cache.clone()),
            Box::new(route_changes.clone()),
            Box::new(pool_cache.clone()),
            Box::new(connections_handed.clone()),
            Box::new(connection_wait.clone()),
            Box::new(pools_open.clone()),
            Box::new(routes_cached.clone()),
            Box::new(server_connections.clone()),
            Box::new(server_budget.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            calls,
            call_seconds,
            route_cache,
            route_changes,
            pool_cache,
            connections_handed,
            connection_wait,
            pools_open,
            routes_cached,
            server_connections,
            server_budget,
            webhooks,
            webhook_items,
            dead_letters,
            inbox_writes,
            inbox_applies,
            inbox_lag,
            event_subscribers,
            events_streamed,
            inbox_apply_seconds,
            lease_renewals,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

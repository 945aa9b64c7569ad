//! Router leases: how router replicas share each database server's connection budget.
//!
//! A server's budget is everything the platform may hold there. The control plane keeps a
//! slice for its own jobs (migrations, backups); the rest, the routers' part, is divided
//! among the live leases on the server in proportion to the demand each reports. Every
//! lease also has a claim: the most its router may be holding now. A grant that went down
//! keeps counting at its old size until the router reports that it applied it (and how
//! many connections it still holds), and a router gets only what the others' claims leave
//! free, so the claims never add up to more than the routers' part: connections move from
//! one router to another only after the first has let them go. A lease not renewed in time
//! (its router died) is dropped and its share returns to the others.

use super::Catalog;
use crate::error::{Error, Result};
use std::time::Duration;

/// One server's line of a lease renewal.
#[derive(Debug, Clone)]
pub struct LeaseDemand {
    pub server: String,
    /// Connections the router wants there.
    pub demand: u32,
    /// The limit it enforces now (its last grant, or 0).
    pub limit: u32,
    /// Connections it holds now.
    pub held: u32,
}

/// How leases are granted (from the control plane's configuration).
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms {
    /// A lease not renewed for this long is dropped.
    pub ttl: Duration,
    /// Connections kept out of the routers' part for the control plane's jobs (at most
    /// half a server's budget).
    pub jobs_connections: u32,
    /// Router processes one registered router may run at once.
    pub max_instances: u32,
}

/// One server's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub server: String,
    /// Connections the router may hold there until its next renewal.
    pub limit: u32,
    /// Whether the division is still moving (a share waiting for others to shrink, or
    /// this router still holding more than its grant): renew soon.
    pub settling: bool,
    /// Whether the grant was held to the router's demand with room left: more is there
    /// when its demand grows (it renews early when calls wait).
    pub capped: bool,
}

/// Connections granted beyond a router's demand: as much again, at least this many.
const HEADROOM_MIN: u32 = 4;

/// The most a router with `demand` is granted: its demand with room to grow until its
/// next renewal. Unclaimed connections stay free for routers that join (and a router
/// that dies leaves only this behind until its lease runs out).
pub fn demand_cap(demand: u32) -> u32 {
    demand.saturating_add(demand.max(HEADROOM_MIN))
}

/// The routers' part of a server's budget: what the control plane's jobs leave.
pub fn routers_part(budget: u32, jobs_connections: u32) -> u32 {
    budget - jobs_connections.min(budget / 2)
}

/// Divides `total` connections among leases in proportion to their demands: one each
/// first (when there are enough), the rest by demand, remainders to the largest fractions
/// (earlier leases first on ties). With no demand anywhere, evenly.
pub fn divide(total: u32, demands: &[u32]) -> Vec<u32> {
    let n = u32::try_from(demands.len()).unwrap_or(u32::MAX);
    if n == 0 {
        return Vec::new();
    }
    let floor = u32::from(total >= n);
    let rest = u64::from(total - floor * n);
    let sum: u64 = demands.iter().map(|&d| u64::from(d)).sum();
    let weights: Vec<u64> = if sum == 0 {
        vec![1; demands.len()]
    } else {
        demands.iter().map(|&d| u64::from(d)).collect()
    };
    let sum = weights.iter().sum::<u64>();
    let mut shares: Vec<u64> = weights.iter().map(|w| rest * w / sum).collect();
    let mut left = rest - shares.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rest * weights[i] % sum));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .map(|s| floor + u32::try_from(s).unwrap_or(u32::MAX))
        .collect()
}

/// A live lease on one server, as the catalog holds it.
struct Held {
    router: String,
    instance: String,
    demand: u32,
    claim: u32,
}

impl Catalog {
    /// Renews (or starts) `instance`'s lease on every server in `demands`, returning its
    /// grants; with `release`, drops the instance's leases instead (it is shutting down
    /// and holds nothing). Requests of one instance are applied in `seq` order: an older
    /// one arriving late is refused. The caller has checked that `router` may serve every
    /// server named.
    pub async fn renew_lease(
        &self,
        router: &str,
        instance: &str,
        seq: i64,
        demands: &[LeaseDemand],
        release: bool,
        terms: LeaseTerms,
    ) -> Result<Vec<LeaseGrant>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('lease-router:' || $1, 0))",
            &[&router],
        )
        .await?;
        let last: Option<i64> = tx
            .query_one(
                "SELECT max(sequencia) FROM concessoes WHERE roteador = $1 AND instancia = $2",
                &[&router, &instance],
            )
            .await?
            .get(0);
        if last.is_some_and(|l| l >= seq) {
            return Err(Error::Aborted(
                "a newer lease request of this router instance was already applied".into(),
            ));
        }
        if release {
            tx.execute(
                "DELETE FROM concessoes WHERE roteador = $1 AND instancia = $2",
                &[&router, &instance],
            )
            .await?;
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let others: i64 = tx
            .query_one(
                "SELECT count(DISTINCT instancia) FROM concessoes
                 WHERE roteador = $1 AND instancia <> $2 AND expira_em > now()",
                &[&router, &instance],
            )
            .await?
            .get(0);
        if others >= i64::from(terms.max_instances) {
            return Err(Error::ResourceExhausted(format!(
                "router {router} already runs {others} instances holding leases (the most allowed)"
            )));
        }
        let ttl_ms = i64::try_from(terms.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut sorted: Vec<&LeaseDemand> = demands.iter().collect();
        // One lock order for every renewal: no deadlocks between routers.
        sorted.sort_by(|a, b| a.server.cmp(&b.server));
        let mut grants = Vec::with_capacity(sorted.len());
        for d in sorted {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('lease-server:' || $1, 0))",
                &[&d.server],
            )
            .await?;
            let budget = tx
                .query_opt(
                    "SELECT orcamento_conexoes FROM servidores WHERE nome = $1",
                    &[&d.server],
                )
                .await?
                .ok_or_else(|| Error::NotFound(format!("no database server named {:?}", d.server)))?
                .get::<_, i32>(0);
            let part = routers_part(u32::try_from(budget).unwrap_or(1), terms.jobs_connections);
            tx.execute(
                "DELETE FROM concessoes WHERE servidor = $1 AND expira_em <= now()",
                &[&d.server],
            )
            .await?;
            let held: Vec<Held> = tx
                .query(
                    "SELECT roteador, instancia, demanda, reivindicado FROM concessoes
                     WHERE servidor = $1 ORDER BY roteador, instancia",
                    &[&d.server],
                )
                .await?
                .iter()
                .map(|r| Held {
                    router: r.get(0),
                    instance: r.get(1),
                    demand: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                    claim: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                })
                .collect();
            let mine = |h: &Held| h.router == router && h.instance == instance;
            let previous = held.iter().find(|h| mine(h)).map_or(0, |h| h.claim);
            let others_claim: u32 = held.iter().filter(|h| !mine(h)).map(|h| h.claim).sum();
            let demand = d.demand.min(part);
            let mut demands: Vec<u32> =
                held.iter().filter(|h| !mine(h)).map(|h| h.demand).collect();
            demands.push(demand);
            let target = divide(part, &demands).last().copied().unwrap_or(0);
            let free = part.saturating_sub(others_claim);
            let limit = target.min(free).min(demand_cap(demand));
            // What it may still hold: its report, never more than its previous claim (a
            // router cannot claim what it was not granted).
            let claim = limit.max(d.limit.max(d.held).min(previous));
            tx.execute(
                "INSERT INTO concessoes
                   (servidor, roteador, instancia, sequencia, demanda, concedido, reivindicado, expira_em)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now() + $8 * interval '1 millisecond')
                 ON CONFLICT (servidor, roteador, instancia) DO UPDATE SET
                   sequencia = EXCLUDED.sequencia, demanda = EXCLUDED.demanda,
                   concedido = EXCLUDED.concedido, reivindicado = EXCLUDED.reivindicado,
                   expira_em = EXCLUDED.expira_em",
                &[
                    &d.server,
                    &router,
                    &instance,
                    &seq,
                    &i32::try_from(demand).unwrap_or(i32::MAX),
                    &i32::try_from(limit).unwrap_or(i32::MAX),
                    &i32::try_from(claim).unwrap_or(i32::MAX),
                    &(ttl_ms as f64),
                ],
            )
            .await?;
            grants.push(LeaseGrant {
                server: d.server.clone(),
                limit,
                settling: limit < target.min(demand_cap(demand)) || claim > limit,
                capped: limit < target.min(free),
            });
        }
        // Servers it no longer names: it holds nothing there.
        let named: Vec<&str> = demands.iter().map(|d| d.server.as_str()).collect();
        tx.execute(
            "DELETE FROM concessoes WHERE roteador = $1 AND instancia = $2 AND servidor <> ALL($3)",
            &[&router, &instance, &named],
        )
        .await?;
        tx.commit().await?;
        Ok(grants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divides_by_demand_with_one_each_first() {
        assert_eq!(divide(10, &[1, 1]), vec![5, 5]);
        assert_eq!(divide(10, &[0, 0, 0]), vec![4, 3, 3]);
        assert_eq!(divide(10, &[9, 1]), vec![8, 2]);
        assert_eq!(divide(10, &[100, 0]), vec![9, 1]);
        assert_eq!(divide(2, &[5, 5, 5]), vec![1, 1, 0]);
        assert_eq!(divide(0, &[5]), vec![0]);
        assert!(divide(7, &[]).is_empty());
        for (total, demands) in [
            (80, vec![3, 70, 12, 0]),
            (13, vec![1, 2, 3]),
            (5, vec![9; 7]),
        ] {
            let shares = divide(total, &demands);
            assert_eq!(shares.iter().sum::<u32>(), total, "{total} {demands:?}");
        }
    }

    #[test]
    fn grants_leave_room_to_grow() {
        assert_eq!(demand_cap(0), 4);
        assert_eq!(demand_cap(3), 7);
        assert_eq!(demand_cap(40), 80);
        assert_eq!(demand_cap(u32::MAX), u32::MAX);
    }

    #[test]
    fn jobs_never_take_more_than_half() {
        assert_eq!(routers_part(80, 6), 74);
        assert_eq!(routers_part(8, 6), 4);
        assert_eq!(routers_part(1, 6), 1);
        assert_eq!(routers_part(10, 0), 10);
    }
}

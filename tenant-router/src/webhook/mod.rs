//! WhatsApp webhooks (Meta Cloud API and Evolution API): the verification handshake and
//! deliveries.
//!
//! A delivery: body limit -> authentication (Meta: `X-Hub-Signature-256`, HMAC-SHA256 of
//! the raw bytes, constant time; Evolution: the tenant's token) -> parse every entry,
//! change, message and status (`whatsapp_ingest`) -> per business number: the tenant by a
//! typed route key -> items that can never be stored become dead letters with their
//! reason -> every tenant's batch written to the durable inbox (`inbox`) in one group
//! commit, and only then the answer: 200 means the delivery is durable, whatever the state
//! of the tenant's database (workers apply it there, in arrival order). Unknown numbers
//! and suspended tenants become dead letters in the control database. An inbox that cannot
//! be written answers 500 (full: 503) so the sender retries; applying is idempotent by
//! `wamid`, so a retried delivery is stored once.

use crate::error::RouterError;
use crate::metrics::Metrics;
use crate::path::TenantPath;
use crate::routes::{RouteKey, Unroutable};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_model::{DeadLetterKind, PhoneNumberId, Slug, TenantKey, TenantStatus, WebhookSource};
use whatsapp_ingest::{evolution, meta};

/// What a delivery is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200: everything stored, dead-lettered or deliberately skipped.
    Ok,
    /// 400: the body is not a webhook at all (retrying cannot help).
    BadRequest,
    /// 401: missing or wrong signature or token, or (Evolution) no such instance: one
    /// answer for both, so the endpoint does not tell which slugs exist. Nothing written.
    Unauthorized,
    /// 500: the inbox (or the control plane) failed; Meta will retry.
    Retry,
    /// 503: too many deliveries are waiting for the inbox; retry later.
    Busy,
}

impl Answer {
    /// The worse of two answers (a retry beats a success).
    fn and(self, other: Answer) -> Answer {
        match (self, other) {
            (Answer::Ok, o) => o,
            (s, _) => s,
        }
    }
}

/// The webhook handler's dependencies.
pub struct Webhooks {
    pub cfg: crate::config::Webhook,
    /// Routes (by number, slug or instance) and the dead letters.
    pub path: Arc<TenantPath>,
    /// Where accepted deliveries go before the answer.
    pub inbox: Arc<crate::inbox::Inbox>,
    pub metrics: Arc<Metrics>,
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_ok(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

impl Webhooks {
    /// The GET handshake: the challenge to echo, or `None` (403).
    pub fn verify<'q>(&self, query: &'q [(String, String)]) -> Option<&'q str> {
        let get = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let token_ok = get("hub.verify_token").is_some_and(|t| {
            t.len() == self.cfg.verify_token.len()
                && signature_eq(t.as_bytes(), self.cfg.verify_token.as_bytes())
        });
        (get("hub.mode") == Some("subscribe") && token_ok)
            .then(|| get("hub.challenge"))
            .flatten()
    }

    /// Handles one signed delivery.
    pub async fn deliver(&self, body: &[u8], signature: Option<&str>) -> Answer {
        let started = Instant::now();
        if !signature_ok(self.cfg.app_secret.as_bytes(), body, signature) {
            self.metrics
                .webhooks
                .with_label_values(&["unauthorized"])
                .inc();
            return Answer::Unauthorized;
        }
        let parsed = match meta::parse(body) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "webhook body is not a WhatsApp delivery");
                self.metrics
                    .webhooks
                    .with_label_values(&["bad_request"])
                    .inc();
                return Answer::BadRequest;
            }
        };
        if parsed.skipped > 0 {
            self.metrics
                .webhook_items
                .with_label_values(&["malformed"])
                .inc_by(parsed.skipped as u64);
        }
        let mut answer = Answer::Ok;
        let mut rows = Vec::with_capacity(parsed.by_phone.len());
        for (phone, batch) in &parsed.by_phone {
            match self.tenant_batch(phone, batch, body).await {
                Ok(Some(row)) => rows.push(row),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(phone_number_id = %phone, error = %e, "webhook batch not accepted; asking Meta to retry");
                    answer = Answer::Retry;
                }
            }
        }
        let answer = answer.and(self.write(rows, started).await);
        self.count(answer);
        answer
    }

    fn count(&self, answer: Answer) {
        let outcome = match answer {
            Answer::Ok => "ok",
            Answer::Busy => "busy",
            _ => "retry",
        };
        self.metrics.webhooks.with_label_values(&[outcome]).inc();
    }

    /// Writes the delivery's rows to the inbox within the webhook deadline.
    async fn write(&self, rows: Vec<crate::inbox::NewRow>, started: Instant) -> Answer {
        use crate::inbox::InboxError;
        let deadline = started + Duration::from_millis(self.cfg.deadline_ms);
        let written = tokio::time::timeout_at(deadline.into(), self.inbox.submit(rows)).await;
        let (answer, outcome) = match written {
            Ok(Ok(())) => (Answer::Ok, "committed"),
            Ok(Err(InboxError::Full)) => (Answer::Busy, "full"),
            Ok(Err(_)) | Err(_) => (Answer::Retry, "failed"),
        };
        self.metrics
            .inbox_writes
            .with_label_values(&[outcome])
            .inc();
        answer
    }

    /// One business number's share of a delivery: its inbox row, or `None` when it went
    /// to the dead letters.
    async fn tenant_batch(
        &self,
        phone: &str,
        batch: &meta::TenantBatch,
        body: &[u8],
    ) -> Result<Option<crate::inbox::NewRow>, RouterError> {
        let route = match PhoneNumberId::parse(phone) {
            Ok(p) => self.path.route(&RouteKey::Phone(p)).await,
            Err(_) => Err(RouterError::TenantNotFound),
        };
        let letter = |kind, tenant_id| Unroutable {
            source: WebhookSource::Meta,
            kind,
            tenant_id,
            phone_number_id: phone,
            body,
            reason: "",
        };
        let route = match route {
            // A tenant being restored takes deliveries too: workers apply them once the
            // restored database is in place.
            Ok(r) if accepts(r.status) => r,
            Ok(r) => {
                // Kept for the tenant, replayed when it is resumed; answered 200.
                let kind = DeadLetterKind::TenantSuspended;
                self.dead_letter(letter(kind, Some(r.route.tenant_id)))
                    .await?;
                return Ok(None);
            }
            Err(RouterError::TenantNotFound) | Err(RouterError::InvalidArgument(_)) => {
                // Nobody owns this number: keep it, answer 200.
                self.dead_letter(letter(DeadLetterKind::UnknownNumber, None))
                    .await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.inbox_row(&route, WebhookSource::Meta, phone, batch.normalize())
            .await
            .map(Some)
    }

    /// Sends a body (or item) to the dead letters and counts what became of it: dropped
    /// (the source's quota is full) is logged and answered like kept, so the sender does
    /// not retry into a full quota.
    async fn dead_letter(&self, letter: Unroutable<'_>) -> Result<(), RouterError> {
        let kept = self.path.routes.record_unroutable(letter).await?;
        if !kept {
            tracing::warn!(source = %letter.source, "dead-letter quota full: delivery dropped");
        }
        self.metrics
            .dead_letters
            .with_label_values(&[if kept { "kept" } else { "dropped" }])
            .inc();
        Ok(())
    }

    /// The inbox row of a normalized batch for the route's tenant; items that can never
    /// be stored become dead letters with their reason first.
    async fn inbox_row(
        &self,
        route: &crate::routes::CachedRoute,
        source: WebhookSource,
        phone: &str,
        batch: whatsapp_ingest::Batch,
    ) -> Result<crate::inbox::NewRow, RouterError> {
        let now = caller_auth::now_secs() as f64;
        let (batch, refused) = batch.admit(now);
        for (item, reason) in &refused {
            let body = serde_json::to_vec(item).unwrap_or_default();
            self.dead_letter(Unroutable {
                source,
                kind: DeadLetterKind::ItemRefused,
                tenant_id: Some(route.route.tenant_id),
                phone_number_id: phone,
                body: &body,
                reason,
            })
            .await?;
        }
        if batch.skipped > 0 {
            self.metrics
                .webhook_items
                .with_label_values(&["skipped"])
                .inc_by(u64::from(batch.skipped));
        }
        Ok(crate::inbox::NewRow {
            tenant_id: route.route.tenant_id,
            server: route.route.server.clone(),
            source: match source {
                WebhookSource::Meta => "meta",
                WebhookSource::Evolution => "evolution",
            },
            phone: phone.to_string(),
            messages: i32::try_from(batch.messages.len()).unwrap_or(i32::MAX),
            batch: serde_json::to_string(&whatsapp_ingest::Batch {
                skipped: 0,
                ..batch
            })
            .map_err(|_| RouterError::Internal("cannot serialize a batch".into()))?,
        })
    }

    /// Handles an Evolution API delivery for `instance` (the tenant's slug), authenticated
    /// by the tenant's webhook token.
    pub async fn deliver_evolution(
        &self,
        instance: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let started = Instant::now();
        let unauthorized = || {
            self.metrics
                .webhooks
                .with_label_values(&["unauthorized"])
                .inc();
            Answer::Unauthorized
        };
        // `i/<name>`: one of the tenant's further instances, with its own token; a slug:
        // the tenant's first instance.
        let key = match instance.strip_prefix("i/") {
            Some(name) => match tenant_model::InstanceName::parse(name) {
                Ok(n) => RouteKey::Instance(n.as_str().to_string()),
                Err(_) => return unauthorized(),
            },
            None => match Slug::parse(instance) {
                Ok(slug) => RouteKey::Tenant(TenantKey::Slug(slug)),
                Err(_) => return unauthorized(),
            },
        };
        let route = match self.path.route(&key).await {
            Ok(r) => r,
            Err(RouterError::TenantNotFound) | Err(RouterError::InvalidArgument(_)) => {
                return unauthorized()
            }
            Err(_) => return Answer::Retry,
        };
        let expected = match &key {
            RouteKey::Instance(name) => match route
                .route
                .evolution_instances
                .iter()
                .find(|i| &i.name == name)
            {
                Some(i) => i.token.as_bytes(),
                None => return unauthorized(),
            },
            _ => route.route.webhook_token.as_bytes(),
        };
        let presented = token.unwrap_or("").as_bytes();
        if expected.is_empty() || !signature_eq(expected, presented) {
            return unauthorized();
        }
        let batch = match evolution::parse(body) {
            Ok(Some(b)) => b,
            Ok(None) => return Answer::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "not an Evolution event");
                self.metrics
                    .webhooks
                    .with_label_values(&["bad_request"])
                    .inc();
                return Answer::BadRequest;
            }
        };
        if !accepts(route.status) {
            // Keep what a suspended tenant receives rather than lose it.
            let letter = Unroutable {
                source: WebhookSource::Evolution,
                kind: DeadLetterKind::TenantSuspended,
                tenant_id: Some(route.route.tenant_id),
                phone_number_id: "",
                body,
                reason: "",
            };
            return match self.dead_letter(letter).await {
                Ok(()) => Answer::Ok,
                Err(_) => Answer::Retry,
            };
        }
        let answer = match self
            .inbox_row(&route, WebhookSource::Evolution, "", batch)
            .await
        {
            Ok(row) => self.write(vec![row], started).await,
            Err(e) => {
                tracing::warn!(tenant = %route.route.slug, error = %e, "evolution delivery not accepted");
                Answer::Retry
            }
        };
        self.count(answer);
        answer
    }
}

/// Whether deliveries for a tenant in `status` go to the inbox (otherwise: dead letters).
fn accepts(status: TenantStatus) -> bool {
    matches!(status, TenantStatus::Active | TenantStatus::Restoring)
}

fn signature_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes an `application/x-www-form-urlencoded` query string.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
                {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secret = b"app-secret-0123456789";
        let body = br#"{"entry":[]}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(secret, body, Some(&good)));
        assert!(
            !signature_ok(secret, b"{\"entry\": []}", Some(&good)),
            "re-serialized bytes differ"
        );
        assert!(!signature_ok(b"other-secret-0123456", body, Some(&good)));
        for bad in [
            None,
            Some(""),
            Some("sha256="),
            Some("sha256=zz"),
            Some("md5=abcd"),
            Some(&good[..20]),
        ] {
            assert!(!signature_ok(secret, body, bad), "{bad:?}");
        }
    }

    #[test]
    fn queries() {
        let q = parse_query("hub.mode=subscribe&hub.challenge=a%2Bb+c%3D&hub.verify_token=t%");
        assert_eq!(
            parse_query("x=%é%")[0].1,
            "%é%",
            "no panic on non-ASCII after %"
        );
        assert_eq!(q[0], ("hub.mode".into(), "subscribe".into()));
        assert_eq!(q[1], ("hub.challenge".into(), "a+b c=".into()));
        assert_eq!(q[2], ("hub.verify_token".into(), "t%".into()));
    }
}

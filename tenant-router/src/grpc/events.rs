//! `Events`: consumer groups reading the message pipeline's event log.

use super::CallContext;
use crate::error::RouterError;
use crate::events::{Cursor, EventLog, Subscription};
use caller_auth::Kind;
use futures_util::Stream;
use proto::domain::v1 as dm;
use proto::model::FromWire;
use std::pin::Pin;
use std::sync::Arc;
use tenant_model::EventKind;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

/// Events held for a slow subscriber before its stream waits.
const STREAM_BUFFER: usize = 256;
/// Most cursors one acknowledgement may carry.
const MAX_ACK: usize = 10_000;

pub struct EventsService {
    pub ctx: Arc<CallContext>,
    pub log: Arc<EventLog>,
    /// Owns the streams' tasks.
    pub tasks: TaskTracker,
    /// Ends every stream at shutdown.
    pub shutdown: CancellationToken,
}

/// `[a-z0-9._-]{1,64}`.
fn group_name(raw: &str) -> Result<&str, RouterError> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(RouterError::InvalidArgument(
            "group must be 1-64 of a-z, 0-9, '.', '_', '-'".into(),
        ))
    }
}

/// The group under the caller's identity: one caller cannot move another's cursors.
fn group_key(claims: &caller_auth::Claims, group: &str) -> String {
    let who = match claims.kind {
        Kind::User => "user",
        _ => "caller",
    };
    format!("{who}:{}/{group}", claims.sub)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<dm::Event, Status>> + Send>>;

#[tonic::async_trait]
impl dm::events_server::Events for EventsService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<dm::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (meta, _, req) = request.into_parts();
        let claims = self.ctx.authenticate(&meta)?;
        let group = group_name(&req.group)?;
        let kinds = if req.kinds.is_empty() {
            None
        } else {
            let mut set = std::collections::HashSet::new();
            for k in &req.kinds {
                set.insert(EventKind::from_wire("kinds", *k).map_err(RouterError::from)?);
            }
            Some(set)
        };
        let tenants = self.ctx.subscription_tenants(&claims, &req.tenants).await?;
        let sub = Subscription {
            group: group_key(&claims, group),
            tenants,
            kinds,
            from_oldest: req.from_oldest,
            expires: claims.exp,
            token_ids: std::iter::once(claims.jti.clone())
                .chain(claims.sid.clone())
                .collect(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        self.tasks
            .spawn(Arc::clone(&self.log).pump(sub, tx, self.shutdown.child_token()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ack(
        &self,
        request: Request<dm::AckRequest>,
    ) -> Result<Response<dm::AckResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let claims = self.ctx.authenticate(&meta)?;
        let group = group_name(&req.group)?;
        if req.cursors.len() > MAX_ACK {
            return Err(RouterError::InvalidArgument(format!(
                "at most {MAX_ACK} cursors per acknowledgement"
            ))
            .into());
        }
        let cursors = req
            .cursors
            .iter()
            .map(|c| Cursor::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        self.log.ack(&group_key(&claims, group), &cursors).await?;
        Ok(Response::new(dm::AckResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(kind: Kind, sub: &str) -> caller_auth::Claims {
        caller_auth::Claims {
            jti: "j".into(),
            kind,
            sub: sub.into(),
            tenants: vec![1],
            all: false,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp: 0,
            iat: 0,
        }
    }

    #[test]
    fn groups_belong_to_their_caller() {
        let a = group_key(&claims(Kind::Caller, "bot-a"), "g");
        assert_ne!(a, group_key(&claims(Kind::Caller, "bot-b"), "g"));
        assert_ne!(a, group_key(&claims(Kind::User, "bot-a"), "g"));
        assert!(group_name("bots.v2_1-x").is_ok());
        for bad in ["", "Bots", "a/b", "a b", &"x".repeat(65)] {
            assert!(group_name(bad).is_err(), "{bad:?}");
        }
    }
}

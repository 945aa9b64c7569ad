//! `TenantAdmin` methods for the message pipeline's inbox.

use super::admin::AdminService;
use crate::auth::Role;
use proto::control::v1 as pb;
use tonic::{Request, Response, Status as GrpcStatus};

impl AdminService {
    pub(super) async fn do_inbox_status(
        &self,
        request: Request<pb::InboxStatusRequest>,
    ) -> Result<Response<pb::InboxStatusResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "inbox.status").await?;
        let status = self.ingest.status(self.stuck_after_secs).await?;
        let mut stuck = Vec::with_capacity(status.stuck.len());
        for t in status.stuck {
            let slug = match self.catalog.tenant_by_id(t.tenant_id).await? {
                Some(r) => r.slug,
                None => String::new(),
            };
            stuck.push(pb::InboxTenant {
                tenant_id: t.tenant_id,
                slug,
                server: t.server,
                pending: t.pending,
                oldest_age_secs: t.oldest_age_secs,
                attempts: t.attempts,
                last_error: t.last_error.unwrap_or_default(),
            });
        }
        Ok(Response::new(pb::InboxStatusResponse {
            depth: status.depth,
            oldest_age_secs: status.oldest_age_secs,
            servers: status
                .servers
                .into_iter()
                .map(|(server, pending, oldest_age_secs)| pb::InboxServer {
                    server,
                    pending,
                    oldest_age_secs,
                })
                .collect(),
            stuck,
            groups: status
                .groups
                .into_iter()
                .map(|g| pb::ConsumerGroup {
                    group: g.group,
                    scope: g.scope,
                    members: g.members,
                    oldest_unacked_age_secs: g.oldest_unacked_age_secs,
                    idle_secs: g.idle_secs,
                })
                .collect(),
        }))
    }

    pub(super) async fn do_forget_consumer_group(
        &self,
        request: Request<pb::ForgetConsumerGroupRequest>,
    ) -> Result<Response<pb::ForgetConsumerGroupResponse>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "inbox.forget_group")
            .await?;
        let group = request.into_inner().group;
        // Names are "caller:SUBJECT/NAME" or "user:ID/NAME"; the lookup decides the rest.
        if group.is_empty() || group.len() > 300 || group.chars().any(char::is_control) {
            return Err(crate::Error::InvalidArgument(
                "group must be a consumer group's full name as `tenantctl inbox status` lists it"
                    .into(),
            )
            .into());
        }
        let cursors = self.ingest.forget_group(&group).await?;
        self.catalog
            .audit(
                &actor,
                "inbox.forget_group",
                None,
                &group,
                serde_json::json!({"cursors": cursors}),
            )
            .await?;
        Ok(Response::new(pb::ForgetConsumerGroupResponse { cursors }))
    }

    pub(super) async fn do_retry_inbox(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::InboxRetryResponse>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, "inbox.retry").await?;
        let t = self.tenant(&request.into_inner().tenant).await?;
        let pending = self.ingest.retry(t.id).await?;
        self.catalog
            .audit(
                &actor,
                "inbox.retry",
                Some(t.id),
                &t.slug,
                serde_json::json!({"pending": pending}),
            )
            .await?;
        Ok(Response::new(pb::InboxRetryResponse { pending }))
    }
}

//! `tenancy.domain.v1.Settings`: a tenant's settings for its services, and its secrets
//! for callers allowed them, read from the control plane and cached per tenant until the
//! tenant changes (the change stream invalidates them) or a minute passes.

use super::CallContext;
use crate::error::RouterError;
use crate::path::{check_status, Permission};
use proto::domain::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Settings by (tenant, with secrets).
pub type SettingsCache = moka::future::Cache<(i64, bool), Arc<pb::TenantSettings>>;

/// A settings cache: at most `capacity` entries, each for a minute at most.
pub fn settings_cache(capacity: u64) -> SettingsCache {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(Duration::from_secs(60))
        .build()
}

/// The service.
pub struct SettingsService {
    pub ctx: Arc<CallContext>,
    pub cache: SettingsCache,
}

impl SettingsService {
    async fn get(
        &self,
        meta: &tonic::metadata::MetadataMap,
        with_secrets: bool,
    ) -> Result<Arc<pb::TenantSettings>, RouterError> {
        let permission = if with_secrets {
            Permission::ReadSecrets
        } else {
            Permission::ReadSettings
        };
        let cached = self.ctx.authorize(meta, permission).await?;
        check_status(cached.status, permission.access())?;
        let tenant = cached.route.tenant_id;
        let routes = Arc::clone(&self.ctx.path.routes);
        self.cache
            .try_get_with((tenant, with_secrets), async move {
                let s = routes.tenant_settings(tenant, with_secrets).await?;
                Ok::<_, RouterError>(Arc::new(pb::TenantSettings {
                    settings_json: s.settings_json,
                    secrets: s.secrets,
                }))
            })
            .await
            .map_err(Arc::unwrap_or_clone)
    }
}

#[tonic::async_trait]
impl pb::settings_server::Settings for SettingsService {
    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::TenantSettings>, Status> {
        let started = Instant::now();
        let (meta, _, message) = request.into_parts();
        let result = self.get(&meta, message.include_secrets).await;
        self.ctx.observe("GetSettings", started, &result);
        result
            .map(|s| Response::new((*s).clone()))
            .map_err(Status::from)
    }
}

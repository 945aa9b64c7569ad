//! Users, their sessions and refresh tokens, password resets and failed-login counters.
//!
//! A session is a `tokens` row of kind `session` (its id is the `sid` of every access
//! token minted for it): revoking it is the same update, trigger and feed to routers as
//! revoking a caller token. A revoked session's row keeps `expira_em` only as long as an
//! access token minted for it may live, so the routers' revocation list stays small.

use super::{epoch_ms, unique_violation, Catalog};
use crate::auth::Actor;
use crate::error::{Error, Result};
use deadpool_postgres::GenericClient;
use tenant_model::{Email, Sector, TenantStatus, UserRole, UserStatus};
use tokio_postgres::Row;

/// A user as the catalog holds it, with its empresa.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub tenant_slug: String,
    pub tenant_status: TenantStatus,
    pub sector: Sector,
    pub email: String,
    pub name: String,
    pub role: UserRole,
    pub status: UserStatus,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub must_change_password: bool,
    pub last_login_ms: Option<i64>,
}

/// What a refresh token turned out to be.
pub enum Refreshed {
    /// The current one: rotated; the session's user.
    Rotated { user: UserRecord, session: String },
    /// An older one of a live session: the session is revoked now.
    Reused { session: String, user_id: i64 },
    /// Unknown, or its session ended or expired.
    Invalid,
}

/// A new user.
pub struct NewUser<'a> {
    pub tenant_id: i64,
    pub email: &'a Email,
    pub name: &'a str,
    pub role: UserRole,
    pub password_hash: &'a str,
    pub must_change_password: bool,
}

fn user_select() -> String {
    format!(
        "SELECT u.id, u.empresa_id, e.slug, e.status, e.setor, u.email, u.nome, u.papel, u.status, \
         u.senha_hash, u.trocar_senha, {} FROM usuarios u JOIN empresas e ON e.id = u.empresa_id",
        epoch_ms("u.ultimo_login")
    )
}

fn user_from_row(row: &Row) -> Result<UserRecord> {
    let bad = |e: tenant_model::Invalid| Error::Internal(format!("catalog user row: {e}"));
    Ok(UserRecord {
        id: row.get(0),
        tenant_id: row.get(1),
        tenant_slug: row.get(2),
        tenant_status: TenantStatus::parse(row.get(3)).map_err(bad)?,
        sector: Sector::parse(row.get(4)).map_err(bad)?,
        email: row.get(5),
        name: row.get(6),
        role: UserRole::parse(row.get(7)).map_err(bad)?,
        status: UserStatus::parse(row.get(8)).map_err(bad)?,
        password_hash: row.get(9),
        must_change_password: row.get(10),
        last_login_ms: row.get(11),
    })
}

/// Revokes sessions chosen by `filter` (SQL on `s`, the `sessoes` row, with `$1` the
/// actor's name and `$2` the access-token lifetime in seconds, then `params`); how many.
async fn revoke_sessions(
    client: &impl GenericClient,
    filter: &str,
    by: &Actor,
    access_ttl_secs: u64,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    let ttl = i64::try_from(access_ttl_secs + caller_auth::LEEWAY_SECS).unwrap_or(i64::MAX);
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&by.name, &ttl];
    all.extend_from_slice(params);
    Ok(client
        .execute(
            &format!(
                "UPDATE tokens t SET revogado_em = now(), revogado_por = $1, \
                 expira_em = least(t.expira_em, now() + make_interval(secs => $2::int8::float8)) \
                 FROM sessoes s WHERE s.id = t.id AND t.revogado_em IS NULL AND ({filter})"
            ),
            &all,
        )
        .await?)
}

impl Catalog {
    /// Adds a user to an empresa within its plan's limit on users; `AlreadyExists` if the
    /// email is taken, `ResourceExhausted` at the limit, `FailedPrecondition` if the
    /// empresa is deleted.
    pub async fn add_user(&self, new: &NewUser<'_>, by: &Actor) -> Result<UserRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let limit = tx
            .query_opt(
                "SELECT e.status, p.max_usuarios, (SELECT count(*) FROM usuarios u WHERE u.empresa_id = e.id) \
                 FROM empresas e JOIN planos p ON p.nome = e.plano WHERE e.id = $1 FOR UPDATE OF e",
                &[&new.tenant_id],
            )
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
        let status: String = limit.get(0);
        if status == "deleted" {
            return Err(Error::FailedPrecondition(
                "tenant is deleted; it takes no users".into(),
            ));
        }
        let (max, count): (Option<i32>, i64) = (limit.get(1), limit.get(2));
        if let Some(max) = max {
            if count >= i64::from(max) {
                return Err(Error::ResourceExhausted(format!(
                    "the tenant's plan allows {max} users and it has {count}; disable none, \
                     remove one or change the plan"
                )));
            }
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO usuarios (empresa_id, email, nome, papel, senha_hash, trocar_senha, criado_por) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &new.tenant_id,
                    &new.email.as_str(),
                    &new.name,
                    &new.role.as_str(),
                    &new.password_hash,
                    &new.must_change_password,
                    &by.name,
                ],
            )
            .await
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::AlreadyExists(format!(
                    "a user with email {} already exists",
                    new.email
                )),
                None => e.into(),
            })?
            .get(0);
        tx.commit().await?;
        self.user(id)
            .await?
            .ok_or_else(|| Error::Internal("user vanished".into()))
    }

    /// One user by id.
    pub async fn user(&self, id: i64) -> Result<Option<UserRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{} WHERE u.id = $1", user_select()), &[&id])
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// One user by (normalised) email.
    pub async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("{} WHERE u.email = $1", user_select()),
                &[&email.as_str()],
            )
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// An empresa's users, by email.
    pub async fn users_of(&self, tenant_id: i64) -> Result<Vec<UserRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("{} WHERE u.empresa_id = $1 ORDER BY u.email", user_select()),
                &[&tenant_id],
            )
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Changes a user's role and/or status; disabling revokes every session of the user in
    /// the same transaction. An empresa's last active owner stays one.
    pub async fn update_user(
        &self,
        id: i64,
        role: Option<UserRole>,
        status: Option<UserStatus>,
        by: &Actor,
        access_ttl_secs: u64,
    ) -> Result<UserRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT empresa_id, papel = 'owner' AND status = 'active' FROM usuarios \
                 WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {id} not found")))?;
        let (tenant, active_owner): (i64, bool) = (row.get(0), row.get(1));
        let stays_owner = role.is_none_or(|r| r == UserRole::Owner)
            && status.is_none_or(|s| s == UserStatus::Active);
        if active_owner && !stays_owner {
            let others: i64 = tx
                .query_one(
                    "SELECT count(*) FROM usuarios WHERE empresa_id = $1 AND id <> $2 \
                     AND papel = 'owner' AND status = 'active'",
                    &[&tenant, &id],
                )
                .await?
                .get(0);
            if others == 0 {
                return Err(Error::FailedPrecondition(
                    "this is the tenant's last active owner; make another user owner first".into(),
                ));
            }
        }
        tx.execute(
            "UPDATE usuarios SET papel = coalesce($2, papel), status = coalesce($3, status), \
             atualizado_em = now() WHERE id = $1",
            &[
                &id,
                &role.map(UserRole::as_str),
                &status.map(UserStatus::as_str),
            ],
        )
        .await?;
        if status == Some(UserStatus::Disabled) {
            revoke_sessions(&tx, "s.usuario_id = $3", by, access_ttl_secs, &[&id]).await?;
        }
        tx.commit().await?;
        self.user(id)
            .await?
            .ok_or_else(|| Error::Internal("user vanished".into()))
    }

    /// Sets a user's password and revokes every session of the user but `keep`; how many
    /// were revoked.
    pub async fn set_password(
        &self,
        id: i64,
        password_hash: &str,
        must_change: bool,
        keep: Option<&str>,
        by: &Actor,
        access_ttl_secs: u64,
    ) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE usuarios SET senha_hash = $2, trocar_senha = $3, atualizado_em = now() WHERE id = $1",
                &[&id, &password_hash, &must_change],
            )
            .await?;
        if updated == 0 {
            return Err(Error::NotFound(format!("user {id} not found")));
        }
        let keep = keep.unwrap_or_default();
        let ended = revoke_sessions(
            &tx,
            "s.usuario_id = $3 AND s.id <> $4",
            by,
            access_ttl_secs,
            &[&id, &keep],
        )
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Starts a session for `user` (its `tokens` row, the first refresh token) and records
    /// the login.
    pub async fn start_session(
        &self,
        user: &UserRecord,
        session: &str,
        refresh_hash: &[u8],
        session_ttl_secs: u64,
        address: Option<&str>,
    ) -> Result<()> {
        let ttl = i64::try_from(session_ttl_secs).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO tokens (id, tipo, sujeito, empresas, emitido_por, expira_em) \
             VALUES ($1, 'session', $2, ARRAY[$3::int8], 'login', now() + make_interval(secs => $4::int8::float8))",
            &[&session, &format!("user:{}", user.id), &user.tenant_id, &ttl],
        )
        .await?;
        tx.execute(
            "INSERT INTO sessoes (id, usuario_id, endereco) VALUES ($1, $2, $3)",
            &[&session, &user.id, &address],
        )
        .await?;
        tx.execute(
            "INSERT INTO tokens_refresh (hash, sessao_id, geracao) VALUES ($1, $2, 1)",
            &[&refresh_hash, &session],
        )
        .await?;
        tx.execute(
            "UPDATE usuarios SET ultimo_login = now() WHERE id = $1",
            &[&user.id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Exchanges refresh token `hash` for `next` (see [`Refreshed`]); a rotation extends
    /// the session by `session_ttl_secs`.
    pub async fn refresh_session(
        &self,
        hash: &[u8],
        next: &[u8],
        session_ttl_secs: u64,
        access_ttl_secs: u64,
    ) -> Result<Refreshed> {
        let ttl = i64::try_from(session_ttl_secs).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT s.id, r.geracao, s.geracao, s.usuario_id FROM tokens_refresh r \
                 JOIN sessoes s ON s.id = r.sessao_id JOIN tokens t ON t.id = s.id \
                 WHERE r.hash = $1 AND t.revogado_em IS NULL AND t.expira_em > now() FOR UPDATE OF s",
                &[&hash],
            )
            .await?
        else {
            return Ok(Refreshed::Invalid);
        };
        let (session, presented, current, user_id): (String, i32, i32, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if presented != current {
            let system = Actor::system("refresh-token-reuse");
            revoke_sessions(&tx, "s.id = $3", &system, access_ttl_secs, &[&session]).await?;
            tx.commit().await?;
            return Ok(Refreshed::Reused { session, user_id });
        }
        tx.execute(
            "UPDATE sessoes SET geracao = geracao + 1, usada_em = now() WHERE id = $1",
            &[&session],
        )
        .await?;
        tx.execute(
            "INSERT INTO tokens_refresh (hash, sessao_id, geracao) VALUES ($1, $2, $3)",
            &[&next, &session, &(current + 1)],
        )
        .await?;
        tx.execute(
            "UPDATE tokens SET expira_em = now() + make_interval(secs => $2::int8::float8) WHERE id = $1",
            &[&session, &ttl],
        )
        .await?;
        tx.commit().await?;
        match self.user(user_id).await? {
            Some(user) => Ok(Refreshed::Rotated { user, session }),
            None => Ok(Refreshed::Invalid),
        }
    }

    /// Whether session `id` is live (unrevoked, unexpired).
    pub async fn session_live(&self, id: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM tokens WHERE id = $1 AND tipo = 'session' AND revogado_em IS NULL \
                 AND expira_em > now()",
                &[&id],
            )
            .await?
            .is_some())
    }

    /// Ends one session; whether it was live.
    pub async fn end_session(&self, id: &str, by: &Actor, access_ttl_secs: u64) -> Result<u64> {
        let client = self.client().await?;
        revoke_sessions(&client, "s.id = $3", by, access_ttl_secs, &[&id]).await
    }

    /// Records a one-time password-reset token (its hash) for a user.
    pub async fn add_password_reset(
        &self,
        hash: &[u8],
        user_id: i64,
        by: &Actor,
        ttl_secs: u64,
    ) -> Result<()> {
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(
                "INSERT INTO redefinicoes_senha (hash, usuario_id, pedido_por, expira_em) \
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4::int8::float8))",
                &[&hash, &user_id, &by.name, &ttl],
            )
            .await?;
        Ok(())
    }

    /// The user of an unused, unexpired password-reset token (without using it up).
    pub async fn password_reset_user(&self, hash: &[u8]) -> Result<Option<i64>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT usuario_id FROM redefinicoes_senha WHERE hash = $1 AND usado_em IS NULL \
                 AND expira_em > now()",
                &[&hash],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Uses up a password-reset token; its user if it was unused and unexpired.
    pub async fn take_password_reset(&self, hash: &[u8]) -> Result<Option<i64>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "UPDATE redefinicoes_senha SET usado_em = now() WHERE hash = $1 AND usado_em IS NULL \
                 AND expira_em > now() RETURNING usuario_id",
                &[&hash],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Seconds until the first of `keys` may try to log in again, if any is held back.
    pub async fn login_held(&self, keys: &[String]) -> Result<Option<u64>> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT ceil(extract(epoch FROM max(bloqueado_ate) - now()))::int8 FROM tentativas_login \
                 WHERE chave = ANY($1) AND bloqueado_ate > now()",
                &[&keys],
            )
            .await?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .map(|s| u64::try_from(s.max(1)).unwrap_or(1)))
    }

    /// Counts a failed login for `key`; from the `free`th failure (within an hour of each
    /// other) on, the key is held back 2 s, doubling per failure up to `max_secs`.
    pub async fn login_failed(&self, key: &str, free: u32, max_secs: u64) -> Result<()> {
        let free = i32::try_from(free).unwrap_or(i32::MAX);
        let max = i64::try_from(max_secs).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(
                "INSERT INTO tentativas_login AS t (chave, falhas, ultima_falha, bloqueado_ate) \
                 VALUES ($1, 1, now(), CASE WHEN $2 <= 1 THEN now() + make_interval(secs => least($3::int8, 2)::float8) END) \
                 ON CONFLICT (chave) DO UPDATE SET \
                   falhas = CASE WHEN t.ultima_falha < now() - interval '1 hour' THEN 1 ELSE t.falhas + 1 END, \
                   ultima_falha = now(), \
                   bloqueado_ate = CASE WHEN t.ultima_falha >= now() - interval '1 hour' AND t.falhas + 1 >= $2 \
                     THEN now() + make_interval(secs => least($3::int8, power(2, least(t.falhas + 2 - $2, 30))::int8)::float8) \
                     ELSE NULL END",
                &[&key, &free, &max],
            )
            .await?;
        Ok(())
    }

    /// Forgets the failures of `key` (a successful login of that account).
    pub async fn login_succeeded(&self, key: &str) -> Result<()> {
        self.client()
            .await?
            .execute("DELETE FROM tentativas_login WHERE chave = $1", &[&key])
            .await?;
        Ok(())
    }

    /// Deletes failed-login counters idle for a day, and spent or expired reset tokens.
    pub async fn prune_login_state(&self) -> Result<u64> {
        let client = self.client().await?;
        let a = client
            .execute(
                "DELETE FROM tentativas_login WHERE ultima_falha < now() - interval '1 day'",
                &[],
            )
            .await?;
        let b = client
            .execute(
                "DELETE FROM redefinicoes_senha WHERE expira_em < now() - interval '1 day'",
                &[],
            )
            .await?;
        Ok(a + b)
    }
}

//! Operators, the tokens the control plane minted, and the audit log.
//!
//! Every token is recorded before it is handed out, so an unknown `jti` is never valid
//! where the catalog is consulted (operator and router tokens), and revoking one is an
//! update that fires `tokens_revoked` (a trigger), which the directory fans out.

use super::{epoch_ms, unique_violation, Catalog};
use crate::auth::{Actor, Role};
use crate::error::{Error, Result};
use caller_auth::{Claims, Kind};
use tokio_postgres::Row;

/// An operator as the catalog holds it.
#[derive(Debug, Clone)]
pub struct OperatorRecord {
    pub name: String,
    pub role: Role,
    pub active: bool,
    pub created_by: String,
    pub created_at_ms: i64,
}

/// A minted token as the catalog holds it.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub kind: String,
    pub subject: String,
    pub tenant_ids: Vec<i64>,
    pub all_tenants: bool,
    pub issued_by: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
}

/// One audit log entry.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub token_id: Option<String>,
    pub action: String,
    pub target: String,
    pub tenant_id: Option<i64>,
    pub outcome: String,
    pub details: serde_json::Value,
}

fn operator_from_row(row: &Row) -> Result<OperatorRecord> {
    Ok(OperatorRecord {
        name: row.get(0),
        role: Role::parse(row.get(1))?,
        active: row.get(2),
        created_by: row.get(3),
        created_at_ms: row.get(4),
    })
}

fn token_from_row(row: &Row) -> TokenRecord {
    TokenRecord {
        id: row.get(0),
        kind: row.get(1),
        subject: row.get(2),
        tenant_ids: row.get(3),
        all_tenants: row.get(4),
        issued_by: row.get(5),
        issued_at_ms: row.get(6),
        expires_at_ms: row.get(7),
        revoked_at_ms: row.get(8),
        revoked_by: row.get(9),
    }
}

fn token_select() -> String {
    format!(
        "SELECT id, tipo, sujeito, empresas, todas, emitido_por, {}, {}, {}, revogado_por FROM tokens",
        epoch_ms("emitido_em"),
        epoch_ms("expira_em"),
        epoch_ms("revogado_em")
    )
}

impl Catalog {
    /// Records a new operator; `AlreadyExists` if the name is taken.
    pub async fn add_operator(&self, name: &str, role: Role, by: &Actor) -> Result<OperatorRecord> {
        self.client()
            .await?
            .execute(
                "INSERT INTO operadores (nome, papel, criado_por) VALUES ($1, $2, $3)",
                &[&name, &role.as_str(), &by.name],
            )
            .await
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::AlreadyExists(format!("operator {name:?} already exists")),
                None => e.into(),
            })?;
        self.operator(name)
            .await?
            .ok_or_else(|| Error::Internal("operator vanished".into()))
    }

    /// Records an operator unless it exists (bootstrap on the control-plane host); an
    /// existing one keeps its role and must be active.
    pub async fn ensure_operator(
        &self,
        name: &str,
        role: Role,
        by: &Actor,
    ) -> Result<OperatorRecord> {
        self.client()
            .await?
            .execute(
                "INSERT INTO operadores (nome, papel, criado_por) VALUES ($1, $2, $3) ON CONFLICT (nome) DO NOTHING",
                &[&name, &role.as_str(), &by.name],
            )
            .await?;
        let op = self
            .operator(name)
            .await?
            .ok_or_else(|| Error::Internal("operator vanished".into()))?;
        if !op.active {
            return Err(Error::FailedPrecondition(format!(
                "operator {name:?} is disabled"
            )));
        }
        Ok(op)
    }

    /// One operator by name.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT nome, papel, ativo, criado_por, {} FROM operadores WHERE nome = $1",
                    epoch_ms("criado_em")
                ),
                &[&name],
            )
            .await?;
        row.as_ref().map(operator_from_row).transpose()
    }

    /// Every operator, by name.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT nome, papel, ativo, criado_por, {} FROM operadores ORDER BY nome",
                    epoch_ms("criado_em")
                ),
                &[],
            )
            .await?;
        rows.iter().map(operator_from_row).collect()
    }

    /// Disables an operator and revokes every token it holds, in one transaction.
    pub async fn disable_operator(&self, name: &str, by: &Actor) -> Result<OperatorRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE operadores SET ativo = false WHERE nome = $1",
                &[&name],
            )
            .await?;
        if updated == 0 {
            return Err(Error::NotFound(format!("operator {name:?} not found")));
        }
        tx.execute(
            "UPDATE tokens SET revogado_em = now(), revogado_por = $2 \
             WHERE tipo = 'operator' AND sujeito = $1 AND revogado_em IS NULL",
            &[&name, &by.name],
        )
        .await?;
        tx.commit().await?;
        self.operator(name)
            .await?
            .ok_or_else(|| Error::Internal("operator vanished".into()))
    }

    /// The role of an operator presenting token `jti`, if both are live: the token is
    /// recorded for that operator, unrevoked and unexpired, and the operator is active.
    pub async fn operator_role(&self, name: &str, jti: &str) -> Result<Option<Role>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT o.papel FROM operadores o JOIN tokens t ON t.sujeito = o.nome AND t.tipo = 'operator' \
                 WHERE o.nome = $1 AND t.id = $2 AND o.ativo AND t.revogado_em IS NULL \
                 AND t.expira_em > now() - interval '30 seconds'",
                &[&name, &jti],
            )
            .await?;
        row.map(|r| Role::parse(r.get(0))).transpose()
    }

    /// Records a token about to be handed out.
    pub async fn record_token(&self, claims: &Claims, issued_by: &Actor) -> Result<()> {
        let exp = i64::try_from(claims.exp).unwrap_or(i64::MAX);
        let iat = i64::try_from(claims.iat).unwrap_or(0);
        self.client()
            .await?
            .execute(
                "INSERT INTO tokens (id, tipo, sujeito, empresas, todas, emitido_por, emitido_em, expira_em) \
                 VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::int8::float8), to_timestamp($8::int8::float8))",
                &[
                    &claims.jti,
                    &claims.kind.as_str(),
                    &claims.sub,
                    &claims.tenants,
                    &claims.all,
                    &issued_by.name,
                    &iat,
                    &exp,
                ],
            )
            .await?;
        Ok(())
    }

    /// One token by id.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{} WHERE id = $1", token_select()), &[&id])
            .await?;
        Ok(row.as_ref().map(token_from_row))
    }

    /// Revokes a token (idempotent: an already revoked token keeps its first revocation).
    pub async fn revoke_token(&self, id: &str, by: &Actor) -> Result<TokenRecord> {
        self.client()
            .await?
            .execute(
                "UPDATE tokens SET revogado_em = now(), revogado_por = $2 WHERE id = $1 AND revogado_em IS NULL",
                &[&id, &by.name],
            )
            .await?;
        self.token(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {id:?} not found")))
    }

    /// Tokens of `kind` (all kinds when `None`), newest first; expired ones only if asked.
    pub async fn tokens(
        &self,
        kind: Option<Kind>,
        include_expired: bool,
    ) -> Result<Vec<TokenRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{} WHERE ($1::text IS NULL OR tipo = $1) AND ($2 OR expira_em > now()) \
                     ORDER BY emitido_em DESC, id LIMIT 10000",
                    token_select()
                ),
                &[&kind.map(Kind::as_str), &include_expired],
            )
            .await?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    /// Whether caller token `id` is recorded, unrevoked and unexpired (with the leeway).
    pub async fn caller_token_live(&self, id: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM tokens WHERE id = $1 AND tipo = 'caller' AND revogado_em IS NULL \
                 AND expira_em > now() - interval '30 seconds'",
                &[&id],
            )
            .await?
            .is_some())
    }

    /// Ids of revoked tokens of these catalog kinds that have not expired (with the
    /// verifiers' leeway).
    pub async fn revoked_tokens(&self, kinds: &[&str]) -> Result<Vec<String>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM tokens WHERE tipo = ANY($1) AND revogado_em IS NOT NULL \
                 AND expira_em > now() - interval '60 seconds'",
                &[&kinds],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Appends to the audit log with an outcome (`ok`, `failed` or `denied`).
    pub async fn audit_outcome(
        &self,
        actor: &Actor,
        action: &str,
        tenant_id: Option<i64>,
        target: &str,
        details: serde_json::Value,
        outcome: &str,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO auditoria (ator, token_id, acao, empresa_id, alvo, detalhes, resultado) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&actor.name, &actor.token_id, &action, &tenant_id, &target, &details, &outcome],
            )
            .await?;
        Ok(())
    }

    /// Audit entries, newest first.
    pub async fn audit_log(
        &self,
        tenant_id: Option<i64>,
        since_ms: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT id, {}, ator, token_id, acao, coalesce(alvo, ''), empresa_id, resultado, detalhes \
                     FROM auditoria WHERE ($1::int8 IS NULL OR empresa_id = $1) \
                     AND ($2::int8 IS NULL OR criado_em >= to_timestamp($2::int8::float8 / 1000)) \
                     ORDER BY id DESC LIMIT $3",
                    epoch_ms("criado_em")
                ),
                &[&tenant_id, &since_ms, &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                id: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                token_id: r.get(3),
                action: r.get(4),
                target: r.get(5),
                tenant_id: r.get(6),
                outcome: r.get(7),
                details: r.get(8),
            })
            .collect())
    }
}

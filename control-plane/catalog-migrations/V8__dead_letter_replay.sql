-- Dead letters know why they were kept (kind) and, when the router knew, for which tenant;
-- replayable ones record when they were last stored in the tenant's database.
ALTER TABLE webhooks_nao_roteados
    ADD COLUMN tipo          text NOT NULL DEFAULT 'unknown_number'
        CHECK (tipo IN ('unknown_number', 'tenant_suspended', 'item_refused')),
    ADD COLUMN empresa_id    bigint REFERENCES empresas (id) ON DELETE SET NULL,
    ADD COLUMN reproduzido_em timestamptz;
-- Rows kept before kinds existed: the reason told them apart.
UPDATE webhooks_nao_roteados SET tipo = CASE
    WHEN motivo = 'tenant suspended' THEN 'tenant_suspended'
    WHEN motivo IS NOT NULL AND motivo <> '' THEN 'item_refused'
    ELSE 'unknown_number' END;
CREATE INDEX webhooks_nao_roteados_pendentes_idx ON webhooks_nao_roteados (empresa_id, id)
    WHERE tipo = 'tenant_suspended' AND reproduzido_em IS NULL;

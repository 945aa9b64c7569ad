-- Per-tenant settings (a documented set of keys plus free-form `extra`) and secrets for
-- the tenant's services (WhatsApp access token, AI provider keys), sealed like database
-- passwords. The tenant database's own `configuracoes` table stays the tenant
-- application's data.
CREATE TABLE configuracoes_empresa (
    empresa_id     bigint PRIMARY KEY REFERENCES empresas (id) ON DELETE CASCADE,
    configuracoes  jsonb NOT NULL DEFAULT '{}',
    atualizado_por text NOT NULL,
    atualizado_em  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE segredos_empresa (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id     bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    nome           text NOT NULL CHECK (nome ~ '^[a-z][a-z0-9_]{1,39}$'),
    -- XChaCha20-Poly1305, associated data "tenant:<id>:secret:<nome>".
    valor_cifrado  bytea NOT NULL,
    atualizado_por text NOT NULL,
    atualizado_em  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (empresa_id, nome)
);

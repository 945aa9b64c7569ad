-- More Evolution API instances per tenant, each with its own name (carried in its webhook
-- URL, /webhooks/evolution/i/<name>) and token. The tenant's first instance keeps the slug
-- URL and `empresas.webhook_token_cifrado`.
CREATE TABLE instancias_evolution (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id    bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    nome          text NOT NULL UNIQUE CHECK (nome ~ '^[a-z0-9][a-z0-9_-]{2,62}$'),
    -- XChaCha20-Poly1305, associated data "evolution:<nome>:token".
    token_cifrado bytea NOT NULL,
    criado_por    text NOT NULL,
    criado_em     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instancias_evolution_empresa_idx ON instancias_evolution (empresa_id);

-- Routers as named identities: each holds its own router token (tokens.tipo = 'router'),
-- may be limited to some database servers, and can be revoked. Every route (with its
-- credentials) the directory hands a router is recorded, so revoking a router can rotate
-- exactly the passwords it saw.

CREATE TABLE roteadores (
    nome         text PRIMARY KEY CHECK (nome ~ '^[a-z][a-z0-9._-]{1,39}$'),
    -- Servers it may serve; NULL means every server.
    servidores   text[],
    ativo        boolean NOT NULL DEFAULT true,
    criado_por   text NOT NULL,
    criado_em    timestamptz NOT NULL DEFAULT now(),
    revogado_em  timestamptz
);

CREATE TABLE entregas (
    roteador     text NOT NULL REFERENCES roteadores (nome),
    empresa_id   bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    -- The tenant's version (and so its credentials) last handed over.
    versao       bigint NOT NULL,
    primeira_em  timestamptz NOT NULL DEFAULT now(),
    ultima_em    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (roteador, empresa_id)
);

-- Login password rotation: the previously active login role keeps working for a grace
-- period (routers still on the old route), then loses its password and its sessions.
ALTER TABLE empresas
    ADD COLUMN papel_a_desativar  text,
    ADD COLUMN desativar_em       timestamptz;
CREATE INDEX empresas_desativar_idx ON empresas (desativar_em) WHERE desativar_em IS NOT NULL;

-- Named operators with roles, and every signed token the control plane mints (caller,
-- operator and router tokens), so tokens can be listed, audited and revoked.

CREATE TABLE operadores (
    nome        text PRIMARY KEY CHECK (nome ~ '^[a-z][a-z0-9._-]{1,39}$'),
    papel       text NOT NULL CHECK (papel IN ('viewer', 'operator', 'admin')),
    ativo       boolean NOT NULL DEFAULT true,
    criado_por  text NOT NULL,
    criado_em   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    -- The token's `jti`.
    id           text PRIMARY KEY,
    tipo         text NOT NULL CHECK (tipo IN ('caller', 'operator', 'router')),
    -- Service, operator or router name.
    sujeito      text NOT NULL,
    -- Caller tokens: the tenant ids granted, or every tenant.
    empresas     bigint[] NOT NULL DEFAULT '{}',
    todas        boolean NOT NULL DEFAULT false,
    emitido_por  text NOT NULL,
    emitido_em   timestamptz NOT NULL DEFAULT now(),
    expira_em    timestamptz NOT NULL,
    revogado_em  timestamptz,
    revogado_por text
);
CREATE INDEX tokens_sujeito_idx ON tokens (tipo, sujeito);
CREATE INDEX tokens_revogados_idx ON tokens (expira_em) WHERE revogado_em IS NOT NULL;

-- A revocation tells the control-plane replicas, which tell routers (caller tokens) or
-- close the revoked router's change stream.
CREATE FUNCTION tokens_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revogado_em IS NOT NULL AND OLD.revogado_em IS NULL THEN
        PERFORM pg_notify('tokens_revoked', NEW.id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tokens_notify AFTER UPDATE ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokens_notify();

-- Who did it with which token, and how it ended.
ALTER TABLE auditoria
    ADD COLUMN token_id  text,
    ADD COLUMN resultado text NOT NULL DEFAULT 'ok' CHECK (resultado IN ('ok', 'failed', 'denied'));
CREATE INDEX auditoria_criado_idx ON auditoria (criado_em);

-- People who log in (#12): users of an empresa with a role, their sessions (each a
-- revocable `tokens` row of kind 'session', so a revocation reaches routers through the
-- same feed as caller tokens), rotating refresh tokens, one-time password-reset tokens,
-- and the counters that slow password guessing per account and per client address.

ALTER TABLE planos ADD COLUMN max_usuarios integer CHECK (max_usuarios > 0);
UPDATE planos SET max_usuarios = CASE nome WHEN 'basico' THEN 3 WHEN 'profissional' THEN 20 END;

CREATE TABLE usuarios (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id      bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    -- Lower-cased; unique across the platform (a person logs in without naming an empresa).
    email           text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) <= 254),
    nome            text NOT NULL DEFAULT '',
    papel           text NOT NULL CHECK (papel IN ('owner', 'admin', 'agent', 'viewer')),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    -- Argon2id in PHC form.
    senha_hash      text NOT NULL,
    -- Set by a generated one-time password: the user must choose one at first use.
    trocar_senha    boolean NOT NULL DEFAULT false,
    criado_por      text NOT NULL,
    criado_em       timestamptz NOT NULL DEFAULT now(),
    atualizado_em   timestamptz NOT NULL DEFAULT now(),
    ultimo_login    timestamptz
);
CREATE INDEX usuarios_empresa_idx ON usuarios (empresa_id);

ALTER TABLE tokens DROP CONSTRAINT tokens_tipo_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_tipo_check
    CHECK (tipo IN ('caller', 'operator', 'router', 'session'));

-- A login session: its `tokens` row (id = the session id carried by every access token
-- minted for it) plus the user it belongs to.
CREATE TABLE sessoes (
    id              text PRIMARY KEY REFERENCES tokens (id) ON DELETE CASCADE,
    usuario_id      bigint NOT NULL REFERENCES usuarios (id) ON DELETE CASCADE,
    -- The refresh generation that is current; an older one presented again is a reuse.
    geracao         integer NOT NULL DEFAULT 1,
    endereco        text,
    criada_em       timestamptz NOT NULL DEFAULT now(),
    usada_em        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessoes_usuario_idx ON sessoes (usuario_id);

-- Every refresh token issued (SHA-256 of it), so an old one is recognised as a reuse.
CREATE TABLE tokens_refresh (
    hash            bytea PRIMARY KEY,
    sessao_id       text NOT NULL REFERENCES sessoes (id) ON DELETE CASCADE,
    geracao         integer NOT NULL
);
CREATE INDEX tokens_refresh_sessao_idx ON tokens_refresh (sessao_id);

CREATE TABLE redefinicoes_senha (
    hash            bytea PRIMARY KEY,
    usuario_id      bigint NOT NULL REFERENCES usuarios (id) ON DELETE CASCADE,
    pedido_por      text NOT NULL,
    criado_em       timestamptz NOT NULL DEFAULT now(),
    expira_em       timestamptz NOT NULL,
    usado_em        timestamptz
);

-- Failed logins per key ('email:<address>' or 'addr:<ip>'), shared by every replica.
CREATE TABLE tentativas_login (
    chave           text PRIMARY KEY,
    falhas          integer NOT NULL DEFAULT 0,
    ultima_falha    timestamptz NOT NULL DEFAULT now(),
    bloqueado_ate   timestamptz
);

-- The control database: the catalog of database servers and tenants (empresas).
-- Only the control plane writes here.

CREATE TABLE servidores (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    nome                 text NOT NULL UNIQUE,
    host                 text NOT NULL,
    porta                integer NOT NULL CHECK (porta BETWEEN 1 AND 65535),
    admin_usuario        text NOT NULL,
    -- XChaCha20-Poly1305, associated data "server:<nome>:admin".
    admin_senha_cifrada  bytea NOT NULL,
    -- Connections all routers together may hold to this server.
    orcamento_conexoes   integer NOT NULL CHECK (orcamento_conexoes > 0),
    -- Tenants this server may hold.
    capacidade           integer NOT NULL CHECK (capacidade > 0),
    estado               text NOT NULL DEFAULT 'active' CHECK (estado IN ('active', 'draining')),
    criado_em            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE planos (
    nome                 text PRIMARY KEY,
    -- Per-tenant pool size routers may open.
    max_conexoes         integer NOT NULL CHECK (max_conexoes > 0),
    max_leads            integer
);
INSERT INTO planos (nome, max_conexoes, max_leads) VALUES
    ('basico', 2, 5000), ('profissional', 5, 50000), ('empresarial', 10, NULL);

CREATE TABLE empresas (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug                    text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9-]{2,39}$'),
    nome                    text NOT NULL,
    setor                   text NOT NULL
                            CHECK (setor IN ('veiculos', 'imoveis', 'autopecas', 'varejo', 'servicos')),
    status                  text NOT NULL
                            CHECK (status IN ('provisioning', 'active', 'suspended', 'failed', 'moving', 'deleted')),
    status_motivo           text,
    servidor_id             bigint NOT NULL REFERENCES servidores (id),
    banco                   text NOT NULL,
    papel                   text NOT NULL,
    -- XChaCha20-Poly1305, associated data "tenant:<slug>:password".
    senha_cifrada           bytea NOT NULL,
    phone_number_id         text UNIQUE,
    telefone_exibicao       text,
    configuracoes           jsonb NOT NULL DEFAULT '{}'::jsonb,
    plano                   text NOT NULL DEFAULT 'basico' REFERENCES planos (nome),
    schema_version          integer NOT NULL DEFAULT 0,
    sector_schema_version   integer NOT NULL DEFAULT 0,
    migration_status        text NOT NULL DEFAULT 'ok' CHECK (migration_status IN ('ok', 'failed')),
    migration_error         text,
    -- Provisioning steps finished so far (what a failure must undo).
    provision_steps         text[] NOT NULL DEFAULT '{}',
    -- Bumped on every change; routers keep the route with the highest version.
    version                 bigint NOT NULL DEFAULT 1,
    criado_em               timestamptz NOT NULL DEFAULT now(),
    atualizado_em           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT empresas_servidor_banco_key UNIQUE (servidor_id, banco)
);
CREATE INDEX empresas_servidor_idx ON empresas (servidor_id);

-- Templates: one migrated database per server and sector that new tenants are cloned from.
CREATE TABLE templates (
    servidor_id             bigint NOT NULL REFERENCES servidores (id),
    setor                   text NOT NULL,
    banco                   text NOT NULL,
    schema_version          integer NOT NULL,
    sector_schema_version   integer NOT NULL,
    atualizado_em           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (servidor_id, setor)
);

CREATE TABLE auditoria (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ator         text NOT NULL,
    acao         text NOT NULL,
    empresa_id   bigint,
    alvo         text,
    detalhes     jsonb NOT NULL DEFAULT '{}'::jsonb,
    criado_em    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX auditoria_empresa_idx ON auditoria (empresa_id, id);

CREATE TABLE migration_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    iniciado_por  text NOT NULL,
    pedido        jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished', 'aborted')),
    migrated      integer NOT NULL DEFAULT 0,
    skipped       integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    busy          integer NOT NULL DEFAULT 0,
    not_started   integer NOT NULL DEFAULT 0,
    iniciado_em   timestamptz NOT NULL DEFAULT now(),
    terminado_em  timestamptz
);

CREATE TABLE migration_run_tenants (
    run_id                      bigint NOT NULL REFERENCES migration_runs (id) ON DELETE CASCADE,
    empresa_id                  bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    outcome                     text NOT NULL
                                CHECK (outcome IN ('migrated', 'skipped', 'failed', 'busy', 'not_started')),
    from_schema_version         integer NOT NULL,
    to_schema_version           integer NOT NULL,
    from_sector_schema_version  integer NOT NULL,
    to_sector_schema_version    integer NOT NULL,
    applied                     integer NOT NULL DEFAULT 0,
    erro                        text,
    duracao_ms                  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, empresa_id)
);

-- Webhooks for phone numbers no tenant owns (written through the control plane's API).
CREATE TABLE webhooks_nao_roteados (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fonte            text NOT NULL,
    phone_number_id  text,
    corpo            bytea NOT NULL,
    recebido_em      timestamptz NOT NULL DEFAULT now()
);

-- Every change to a tenant row tells the control-plane replicas, which tell routers.
CREATE FUNCTION empresas_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('empresas_changed', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER empresas_notify AFTER INSERT OR UPDATE ON empresas
    FOR EACH ROW EXECUTE FUNCTION empresas_notify();

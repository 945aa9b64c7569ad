-- In-place restores: a tenant being restored is `restoring` (routers answer retryably),
-- the restore builds the next generation beside the live one and switches to it; the
-- previous generation is kept for a grace period in `geracoes_retiradas`, then dropped.
ALTER TABLE empresas DROP CONSTRAINT empresas_status_check;
ALTER TABLE empresas ADD CONSTRAINT empresas_status_check
    CHECK (status IN ('provisioning', 'active', 'suspended', 'failed', 'moving', 'deleted', 'restoring'));

CREATE TABLE restauracoes (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id          bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    backup_id           bigint REFERENCES backups (id) ON DELETE SET NULL,
    -- The generation being built.
    geracao             integer NOT NULL,
    status_anterior     text NOT NULL,
    estado              text NOT NULL DEFAULT 'running'
                            CHECK (estado IN ('running', 'switched', 'failed', 'abandoned')),
    -- The new generation's owner and login passwords, sealed.
    senha_dono_cifrada  bytea NOT NULL,
    senha_cifrada       bytea NOT NULL,
    passo               text NOT NULL DEFAULT 'start',
    erro                text,
    replica             text NOT NULL,
    iniciado_em         timestamptz NOT NULL DEFAULT now(),
    batimento_em        timestamptz NOT NULL DEFAULT now(),
    terminado_em        timestamptz
);
CREATE UNIQUE INDEX restauracoes_uma_por_empresa ON restauracoes (empresa_id) WHERE estado = 'running';

CREATE TABLE geracoes_retiradas (
    servidor_id   bigint NOT NULL REFERENCES servidores (id),
    banco         text NOT NULL,
    papel_dono    text NOT NULL,
    papeis_login  text[] NOT NULL,
    empresa_id    bigint,
    remover_apos  timestamptz NOT NULL,
    removida_em   timestamptz,
    PRIMARY KEY (servidor_id, banco)
);

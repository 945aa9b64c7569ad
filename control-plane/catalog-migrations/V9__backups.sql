-- Backups of tenant databases (and of the catalog itself): one row per attempt. A row is
-- `running` while its object is being written, `ok` once the object is complete and
-- verified, `failed` when the attempt failed, `abandoned` when the replica taking it died
-- (its partial upload never became an object).
CREATE TABLE backups (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id            bigint REFERENCES empresas (id) ON DELETE SET NULL,
    tipo                  text NOT NULL CHECK (tipo IN ('tenant', 'catalog')),
    motivo                text NOT NULL CHECK (motivo IN ('manual', 'scheduled', 'final')),
    estado                text NOT NULL DEFAULT 'running'
                              CHECK (estado IN ('running', 'ok', 'failed', 'abandoned')),
    objeto                text NOT NULL UNIQUE,
    -- The object's data key, sealed with the master key.
    chave_cifrada         bytea NOT NULL,
    bytes                 bigint,
    -- SHA-256 of the stored object, hex.
    checksum              text,
    duracao_ms            bigint,
    schema_version        integer,
    sector_schema_version integer,
    -- Per-table row counts at the backup's snapshot, server and pg_dump versions.
    manifesto             jsonb,
    erro                  text,
    replica               text NOT NULL,
    iniciado_em           timestamptz NOT NULL DEFAULT now(),
    batimento_em          timestamptz NOT NULL DEFAULT now(),
    terminado_em          timestamptz
);
CREATE INDEX backups_empresa_idx ON backups (empresa_id, iniciado_em DESC);
CREATE INDEX backups_running_idx ON backups (batimento_em) WHERE estado = 'running';

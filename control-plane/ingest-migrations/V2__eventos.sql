-- The platform's event log: every event tenant databases record in their outbox, relayed
-- here by routers (once: unique by tenant, database generation and outbox id), read by
-- consumer groups with durable cursors.
CREATE TABLE eventos (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id    bigint NOT NULL,
    servidor      text NOT NULL,
    -- The tenant database (generation) and outbox row the event came from.
    banco         text NOT NULL,
    origem_id     bigint NOT NULL,
    -- Consumer groups split the log by partition (empresa_id % 16): one tenant's events
    -- stay in order within one partition.
    particao      smallint NOT NULL,
    tipo          text NOT NULL,
    dados         text NOT NULL,
    criado_em     timestamptz NOT NULL,
    registrado_em timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction: readers take only rows of transactions older than every
    -- running one, in (xid, id) order, so a cursor never passes a row committed later.
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (empresa_id, banco, origem_id)
);
CREATE INDEX eventos_leitura ON eventos (particao, xid, id);
CREATE INDEX eventos_registro ON eventos (registrado_em);

-- A consumer group's position per partition: everything up to (xid, evento) acknowledged.
CREATE TABLE cursores (
    grupo         text NOT NULL,
    particao      smallint NOT NULL,
    xid           xid8 NOT NULL,
    evento        bigint NOT NULL,
    atualizado_em timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grupo, particao)
);

-- Live subscribers of each group (renewed every few seconds): the partitions are divided
-- among them.
CREATE TABLE membros (
    grupo   text NOT NULL,
    membro  text NOT NULL,
    visto_em timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grupo, membro)
);

ALTER TABLE eventos ENABLE ROW LEVEL SECURITY;
CREATE POLICY roteador ON eventos USING (serve_servidor(servidor));

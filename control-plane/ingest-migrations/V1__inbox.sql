-- The durable inbox between WhatsApp and the tenant databases. A router writes each signed
-- delivery's share for one tenant here (one row, its items normalised) and answers the
-- sender only once that row is committed; workers apply pending rows to the tenant's
-- database in arrival order and mark them applied. Applied rows are kept for a while
-- (`ingest.applied_retention_hours`) and then pruned.
CREATE TABLE inbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id   bigint NOT NULL,
    -- The tenant's database server when the row was written: routers see only the rows of
    -- the servers they serve, and a worker applies a row only to a tenant on this server.
    servidor     text NOT NULL,
    fonte        text NOT NULL CHECK (fonte IN ('meta', 'evolution')),
    -- The business number the delivery was sent to (Meta; empty for Evolution).
    numero       text NOT NULL DEFAULT '',
    -- The normalised batch as JSON text ({"messages": [...], "statuses": [...]}); text, not
    -- jsonb, so no item's content (a \u0000 escape) can make the write fail.
    lote         text NOT NULL,
    mensagens    int NOT NULL,
    recebido_em  timestamptz NOT NULL DEFAULT now(),
    recebido_por text NOT NULL DEFAULT session_user,
    aplicado_em  timestamptz,
    -- Set when the row was applied without storing (refused by the tenant's database for
    -- good, or not the tenant's server); the reason.
    erro         text
);
CREATE INDEX inbox_pendentes ON inbox (empresa_id, id) WHERE aplicado_em IS NULL;
CREATE INDEX inbox_aplicados ON inbox (aplicado_em) WHERE aplicado_em IS NOT NULL;

-- Tenants whose last apply failed for a transient reason (database down, over budget):
-- retried from `proxima_em` on, with backoff.
CREATE TABLE inbox_atrasos (
    empresa_id  bigint PRIMARY KEY,
    servidor    text NOT NULL,
    tentativas  int NOT NULL,
    proxima_em  timestamptz NOT NULL,
    ultimo_erro text NOT NULL,
    desde       timestamptz NOT NULL DEFAULT now()
);

-- Which servers each router login may see (NULL: all). Written by the control plane only.
CREATE TABLE escopos (
    papel      text PRIMARY KEY,
    servidores text[]
);

-- Whether the session's router login serves `s`. SECURITY DEFINER so routers need no
-- access to `escopos`; `session_user` is the login (inside, `current_user` is the owner).
CREATE FUNCTION serve_servidor(s text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT EXISTS (SELECT 1 FROM public.escopos e
                         WHERE e.papel = session_user
                           AND (e.servidores IS NULL OR s = ANY (e.servidores))) $$;
REVOKE ALL ON FUNCTION serve_servidor(text) FROM PUBLIC;

ALTER TABLE inbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE inbox_atrasos ENABLE ROW LEVEL SECURITY;
CREATE POLICY roteador ON inbox USING (serve_servidor(servidor));
CREATE POLICY roteador ON inbox_atrasos USING (serve_servidor(servidor));

-- Tenants whose outbox may hold events of domain writes not yet relayed. A router records
-- the tenant here (at most once per `inbox.relay_window_ms`) before a write, and relays
-- the outbox right after it; when a router dies in between, any router's workers find the
-- record once it is stale (three windows old: every write it covers has ended), relay the
-- outbox and delete the record. Without it those events would wait for the tenant's next
-- delivery or write.
CREATE TABLE relay_pendentes (
    empresa_id bigint PRIMARY KEY,
    servidor   text NOT NULL,
    marcado_em timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX relay_pendentes_marcado ON relay_pendentes (marcado_em);
ALTER TABLE relay_pendentes ENABLE ROW LEVEL SECURITY;
CREATE POLICY roteador ON relay_pendentes USING (serve_servidor(servidor));

-- Dead letters deduplicated by content (a retried delivery counts, it is not stored again)
-- and kept for a retention period.
ALTER TABLE webhooks_nao_roteados
    ADD COLUMN hash       bytea,
    ADD COLUMN vezes      integer NOT NULL DEFAULT 1,
    ADD COLUMN ultima_em  timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX webhooks_nao_roteados_hash_key ON webhooks_nao_roteados (fonte, hash)
    WHERE hash IS NOT NULL;
CREATE INDEX webhooks_nao_roteados_ultima_idx ON webhooks_nao_roteados (ultima_em);

-- Free-form tags on leads (set by sales bots and the CRM), and a recency index for
-- conversation lists. Additive: code of the previous release keeps working.
ALTER TABLE leads ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
CREATE INDEX conversas_recentes_idx ON conversas (ultima_mensagem_em DESC NULLS LAST, id DESC);

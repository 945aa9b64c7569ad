-- Plans limit calls per second per tenant (routers enforce it; NULL: unlimited) and
-- storage (warned in `tenantctl status`; NULL: unlimited).
ALTER TABLE planos
    ADD COLUMN chamadas_por_segundo integer CHECK (chamadas_por_segundo > 0),
    ADD COLUMN armazenamento_mb     integer CHECK (armazenamento_mb > 0);
UPDATE planos SET chamadas_por_segundo = CASE nome WHEN 'basico' THEN 20 WHEN 'profissional' THEN 100 WHEN 'empresarial' THEN 500 END,
                  armazenamento_mb = CASE nome WHEN 'basico' THEN 1024 WHEN 'profissional' THEN 10240 END;

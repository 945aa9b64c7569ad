-- Every apply updates its inbox rows (never a HOT update: `aplicado_em` decides the
-- pending index), so the table and its pending index fill with dead entries within
-- minutes under load. Vacuum them early and without throttling.
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.002, autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE eventos SET (autovacuum_analyze_scale_factor = 0.02);

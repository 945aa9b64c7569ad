-- Scheduled (and on-demand) verification: a backup restored into a scratch database and
-- checked like a restore would be; the outcome stays on the backup.
ALTER TABLE backups
    ADD COLUMN verificado_em      timestamptz,
    ADD COLUMN verificacao_erro   text;

-- Backup policy per plan: how often a tenant is backed up (0: never on schedule) and what
-- retention keeps (the newest backup of each of the last N days and of the last M weeks,
-- and always the newest). Final backups of deleted tenants follow the deletion's window.
ALTER TABLE planos
    ADD COLUMN backup_intervalo_segundos integer NOT NULL DEFAULT 86400 CHECK (backup_intervalo_segundos >= 0),
    ADD COLUMN backup_diarios            integer NOT NULL DEFAULT 7 CHECK (backup_diarios >= 0),
    ADD COLUMN backup_semanais           integer NOT NULL DEFAULT 4 CHECK (backup_semanais >= 0);

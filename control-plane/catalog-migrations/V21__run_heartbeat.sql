-- A fleet run says it is alive every few seconds; a run whose replica died (no beat for
-- `fleet.stale_after_secs`) is marked `interrupted` by any replica, and can be run again.
ALTER TABLE migration_runs ADD COLUMN batimento_em timestamptz NOT NULL DEFAULT now();
ALTER TABLE migration_runs DROP CONSTRAINT migration_runs_status_check;
ALTER TABLE migration_runs ADD CONSTRAINT migration_runs_status_check
    CHECK (status IN ('running', 'finished', 'aborted', 'interrupted'));
CREATE INDEX migration_runs_running_idx ON migration_runs (batimento_em) WHERE status = 'running';

-- Isolation role model (second wave). Each tenant database generation has an owner role
-- (owns the database and every object in it; only control-plane jobs log in as it) and two
-- login roles with DML only (routers use the active one; rotation swaps them). Names come
-- from the tenant id and the generation, never from the slug.
ALTER TABLE empresas
    -- 1: the legacy model (one role that owns the database; routers hold it);
    -- 2: owner + two login roles. `tenantctl harden` upgrades 1 to 2.
    ADD COLUMN modelo_papeis        smallint NOT NULL DEFAULT 1 CHECK (modelo_papeis IN (1, 2)),
    ADD COLUMN geracao              integer NOT NULL DEFAULT 1 CHECK (geracao > 0),
    ADD COLUMN papel_dono           text,
    -- XChaCha20-Poly1305, associated data "tenant:<id>:owner".
    ADD COLUMN senha_dono_cifrada   bytea,
    -- The login role not in use (no password until a rotation activates it).
    ADD COLUMN papel_reserva        text,
    -- A password staged for the standby login role by a rotation or an upgrade in progress
    -- (XChaCha20-Poly1305, associated data "tenant:<id>:standby").
    ADD COLUMN senha_reserva_cifrada bytea,
    -- The first release's role of a tenant being upgraded, until the upgrade has dropped it.
    ADD COLUMN papel_legado         text,
    ADD CONSTRAINT empresas_papeis_completos CHECK (
        modelo_papeis = 1 OR (papel_dono IS NOT NULL AND senha_dono_cifrada IS NOT NULL AND papel_reserva IS NOT NULL));

ALTER TABLE servidores
    -- The template owner's login password on this server (XChaCha20-Poly1305, associated
    -- data "server:<nome>:template-owner"); templates are migrated logged in as that role.
    ADD COLUMN template_senha_cifrada  bytea,
    -- Whether CONNECT on `postgres` and `template1` was revoked from PUBLIC.
    ADD COLUMN manutencao_fechada      boolean NOT NULL DEFAULT false;

-- Fleet runs carry one operation: schema migrations, or the upgrade of legacy tenants to
-- the role model above (`tenantctl harden`), whose per-tenant success is 'upgraded'.
ALTER TABLE migration_runs
    ADD COLUMN operacao text NOT NULL DEFAULT 'migrate' CHECK (operacao IN ('migrate', 'harden'));
ALTER TABLE migration_run_tenants
    DROP CONSTRAINT migration_run_tenants_outcome_check,
    ADD CONSTRAINT migration_run_tenants_outcome_check
        CHECK (outcome IN ('migrated', 'upgraded', 'skipped', 'failed', 'busy', 'not_started'));
-- What an upgrade found and did in a tenant database (objects removed or quarantined).
ALTER TABLE migration_run_tenants ADD COLUMN relatorio jsonb;

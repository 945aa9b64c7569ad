-- Offboarding: a deleted tenant keeps its row (status 'deleted', who/when/why, when it is
-- purged) until its retention window ends; its WhatsApp number is freed at once. The purge
-- drops its database, roles and backups and leaves a tombstone here; only then is the slug
-- free again.
ALTER TABLE empresas
    ADD COLUMN excluido_por     text,
    ADD COLUMN excluido_em      timestamptz,
    ADD COLUMN motivo_exclusao  text,
    ADD COLUMN purgar_apos      timestamptz,
    ADD COLUMN phone_number_id_anterior text;

CREATE TABLE empresas_excluidas (
    id               bigint PRIMARY KEY,
    slug             text NOT NULL,
    nome             text NOT NULL,
    phone_number_id  text,
    excluido_por     text NOT NULL,
    excluido_em      timestamptz NOT NULL,
    motivo           text,
    purgado_em       timestamptz NOT NULL DEFAULT now()
);

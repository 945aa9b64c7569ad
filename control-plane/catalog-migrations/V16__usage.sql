-- Per-tenant usage by day, as routers report it (gRPC calls admitted, webhook messages
-- stored). Database size is read from the servers when asked.
CREATE TABLE uso_diario (
    empresa_id  bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    dia         date NOT NULL,
    chamadas    bigint NOT NULL DEFAULT 0,
    mensagens   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (empresa_id, dia)
);

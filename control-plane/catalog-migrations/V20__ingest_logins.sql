-- Each router's own login to the ingest database (its role sees only the inbox rows of the
-- servers the router may serve). The password is sealed like tenant credentials
-- (associated data "ingest:<router>").
CREATE TABLE ingest_logins (
    id           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    roteador     text PRIMARY KEY REFERENCES roteadores (nome) ON DELETE CASCADE,
    papel        text NOT NULL UNIQUE,
    senha_cifrada bytea NOT NULL,
    criado_em    timestamptz NOT NULL DEFAULT now()
);

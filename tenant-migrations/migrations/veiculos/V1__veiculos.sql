-- Vehicle dealers: one row per vehicle, attached to its catalog item.
CREATE TABLE veiculos (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    produto_id       bigint NOT NULL REFERENCES produtos_catalogo (id) ON DELETE CASCADE,
    marca            text NOT NULL,
    modelo           text NOT NULL,
    versao           text,
    ano_fabricacao   integer CHECK (ano_fabricacao BETWEEN 1900 AND 2100),
    ano_modelo       integer CHECK (ano_modelo BETWEEN 1900 AND 2100),
    quilometragem    integer CHECK (quilometragem >= 0),
    combustivel      text,
    cambio           text,
    cor              text,
    placa            text,
    CONSTRAINT veiculos_produto_id_key UNIQUE (produto_id)
);
CREATE INDEX veiculos_marca_modelo_idx ON veiculos (marca, modelo);

-- Parts and retail: stock and compatibility of each catalog item.
CREATE TABLE produtos (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    produto_id          bigint NOT NULL REFERENCES produtos_catalogo (id) ON DELETE CASCADE,
    marca               text,
    codigo_fabricante   text,
    unidade             text NOT NULL DEFAULT 'un',
    estoque             integer NOT NULL DEFAULT 0 CHECK (estoque >= 0),
    -- Vehicles or models this part fits (autopecas); free-form for varejo.
    compatibilidade     jsonb NOT NULL DEFAULT '[]'::jsonb,
    CONSTRAINT produtos_produto_id_key UNIQUE (produto_id)
);
CREATE INDEX produtos_codigo_fabricante_idx ON produtos (codigo_fabricante);

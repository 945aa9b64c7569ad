-- Real estate: one row per property, attached to its catalog item.
CREATE TABLE imoveis (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    produto_id   bigint NOT NULL REFERENCES produtos_catalogo (id) ON DELETE CASCADE,
    tipo         text NOT NULL CHECK (tipo IN ('apartamento', 'casa', 'terreno', 'comercial', 'rural')),
    finalidade   text NOT NULL CHECK (finalidade IN ('venda', 'aluguel')),
    quartos      integer CHECK (quartos >= 0),
    banheiros    integer CHECK (banheiros >= 0),
    vagas        integer CHECK (vagas >= 0),
    area_m2      numeric(10, 2) CHECK (area_m2 > 0),
    bairro       text,
    cidade       text,
    uf           char(2),
    CONSTRAINT imoveis_produto_id_key UNIQUE (produto_id)
);
CREATE INDEX imoveis_cidade_bairro_idx ON imoveis (cidade, bairro);

-- Common schema of every tenant database: leads, conversations, messages, catalog.
-- The unique keys below make WhatsApp webhook ingestion idempotent.

CREATE TABLE leads (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Canonical WhatsApp id: digits only, Brazilian mobiles with the 9th digit.
    wa_id         text NOT NULL,
    -- The id exactly as WhatsApp sent it.
    wa_id_raw     text,
    nome          text,
    status        text NOT NULL DEFAULT 'novo'
                  CHECK (status IN ('novo', 'em_atendimento', 'qualificado', 'convertido', 'perdido')),
    origem        text,
    atributos     jsonb NOT NULL DEFAULT '{}'::jsonb,
    criado_em     timestamptz NOT NULL DEFAULT now(),
    atualizado_em timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT leads_wa_id_key UNIQUE (wa_id)
);
CREATE INDEX leads_status_id_idx ON leads (status, id);

CREATE TABLE conversas (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lead_id             bigint NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    status              text NOT NULL DEFAULT 'aberta' CHECK (status IN ('aberta', 'fechada')),
    canal               text NOT NULL DEFAULT 'whatsapp',
    nao_lidas           integer NOT NULL DEFAULT 0,
    aberta_em           timestamptz NOT NULL DEFAULT now(),
    fechada_em          timestamptz,
    ultima_mensagem_em  timestamptz
);
-- At most one open conversation per lead, even under concurrent webhook deliveries.
CREATE UNIQUE INDEX conversas_uma_aberta_por_lead ON conversas (lead_id) WHERE status = 'aberta';
CREATE INDEX conversas_lead_id_idx ON conversas (lead_id, id);

CREATE TABLE mensagens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversa_id   bigint NOT NULL REFERENCES conversas (id) ON DELETE CASCADE,
    -- WhatsApp message id; NULL only for messages not (yet) sent through WhatsApp.
    wamid         text,
    direcao       text NOT NULL CHECK (direcao IN ('entrada', 'saida')),
    tipo          text NOT NULL DEFAULT 'text',
    conteudo      text,
    midia_id      text,
    midia_mime    text,
    midia_sha256  text,
    status        text NOT NULL DEFAULT 'recebida'
                  CHECK (status IN ('recebida', 'pendente', 'sent', 'delivered', 'read', 'failed')),
    erro          jsonb,
    enviada_em    timestamptz NOT NULL DEFAULT now(),
    lida_em       timestamptz,
    criado_em     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mensagens_wamid_key UNIQUE (wamid)
);
CREATE INDEX mensagens_conversa_id_idx ON mensagens (conversa_id, id);

CREATE TABLE produtos_catalogo (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku             text NOT NULL,
    nome            text NOT NULL,
    descricao       text,
    preco_centavos  bigint CHECK (preco_centavos >= 0),
    moeda           text NOT NULL DEFAULT 'BRL',
    ativo           boolean NOT NULL DEFAULT true,
    atributos       jsonb NOT NULL DEFAULT '{}'::jsonb,
    busca           tsvector GENERATED ALWAYS AS
                    (to_tsvector('portuguese', coalesce(nome, '') || ' ' || coalesce(descricao, ''))) STORED,
    criado_em       timestamptz NOT NULL DEFAULT now(),
    atualizado_em   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT produtos_catalogo_sku_key UNIQUE (sku)
);
CREATE INDEX produtos_catalogo_busca_idx ON produtos_catalogo USING gin (busca);

-- Per-tenant settings; sector defaults are seeded here at provisioning.
CREATE TABLE configuracoes (
    chave          text PRIMARY KEY,
    valor          jsonb NOT NULL,
    atualizado_em  timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox of the message pipeline's events: every new message, status change
-- and new lead is recorded here by triggers, in the same transaction as the change itself
-- (webhook applies and domain writes alike). Routers relay the rows to the platform's event
-- log and then delete them.
CREATE TABLE eventos_saida (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tipo      text NOT NULL CHECK (tipo IN ('message.received', 'message.sent', 'message.status', 'lead.created')),
    dados     jsonb NOT NULL,
    criado_em timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION eventos_mensagens_novas() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eventos_saida (tipo, dados)
    SELECT CASE WHEN n.direcao = 'entrada' THEN 'message.received' ELSE 'message.sent' END,
           jsonb_build_object('message_id', n.id, 'wamid', n.wamid, 'conversation_id', n.conversa_id,
                              'lead_id', c.lead_id, 'direction', n.direcao, 'kind', n.tipo,
                              'body', n.conteudo, 'media_id', n.midia_id, 'media_mime', n.midia_mime,
                              'status', n.status, 'sent_at', n.enviada_em)
    FROM novas n JOIN conversas c ON c.id = n.conversa_id
    ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER eventos_mensagens_novas AFTER INSERT ON mensagens
    REFERENCING NEW TABLE AS novas FOR EACH STATEMENT EXECUTE FUNCTION eventos_mensagens_novas();

CREATE FUNCTION eventos_mensagens_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eventos_saida (tipo, dados)
    SELECT 'message.status',
           jsonb_build_object('message_id', n.id, 'wamid', n.wamid, 'conversation_id', n.conversa_id,
                              'status', n.status, 'previous', o.status, 'error', n.erro)
    FROM novas n JOIN antigas o ON o.id = n.id
    WHERE n.status IS DISTINCT FROM o.status
    ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER eventos_mensagens_status AFTER UPDATE ON mensagens
    REFERENCING OLD TABLE AS antigas NEW TABLE AS novas FOR EACH STATEMENT
    EXECUTE FUNCTION eventos_mensagens_status();

CREATE FUNCTION eventos_leads_novos() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eventos_saida (tipo, dados)
    SELECT 'lead.created',
           jsonb_build_object('lead_id', n.id, 'wa_id', n.wa_id, 'name', n.nome, 'origin', n.origem,
                              'status', n.status)
    FROM novos n
    ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER eventos_leads_novos AFTER INSERT ON leads
    REFERENCING NEW TABLE AS novos FOR EACH STATEMENT EXECUTE FUNCTION eventos_leads_novos();

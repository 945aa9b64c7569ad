-- More WhatsApp (Meta) numbers per tenant: a sales line beside a support line. The
-- tenant's first number stays `empresas.phone_number_id`; further ones live here. A number
-- belongs to one tenant across both places: both sides take an advisory lock on the
-- number and check the other before writing.
CREATE TABLE numeros (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    empresa_id       bigint NOT NULL REFERENCES empresas (id) ON DELETE CASCADE,
    phone_number_id  text NOT NULL UNIQUE CHECK (phone_number_id ~ '^[0-9]{5,25}$'),
    telefone_exibicao text,
    criado_por       text NOT NULL,
    criado_em        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX numeros_empresa_idx ON numeros (empresa_id);

CREATE FUNCTION numero_unico() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.phone_number_id IS NULL THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('numero:' || NEW.phone_number_id));
    IF TG_TABLE_NAME = 'numeros' THEN
        IF EXISTS (SELECT 1 FROM empresas WHERE phone_number_id = NEW.phone_number_id) THEN
            RAISE EXCEPTION 'phone_number_id % already belongs to a tenant', NEW.phone_number_id
                USING ERRCODE = 'unique_violation', CONSTRAINT = 'numeros_phone_number_id_key';
        END IF;
    ELSIF EXISTS (SELECT 1 FROM numeros WHERE phone_number_id = NEW.phone_number_id) THEN
        RAISE EXCEPTION 'phone_number_id % already belongs to a tenant', NEW.phone_number_id
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'empresas_phone_number_id_key';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER numeros_unico BEFORE INSERT OR UPDATE OF phone_number_id ON numeros
    FOR EACH ROW EXECUTE FUNCTION numero_unico();
CREATE TRIGGER empresas_numero_unico BEFORE INSERT OR UPDATE OF phone_number_id ON empresas
    FOR EACH ROW EXECUTE FUNCTION numero_unico();

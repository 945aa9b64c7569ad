-- The scope functions behind the row-level security policies, in PL/pgSQL instead of SQL.
--
-- PostgreSQL 15 parses and plans a SQL function's body again in every statement that calls
-- it (its cache lasts only as long as the calling statement), so every statement on the
-- inbox, the event log, relay marks, cursors and members paid a parse and a plan of the
-- scope lookup, twice for escopo_da_sessao(), which calls servidores_servidos(): about a
-- fifth of the ingest server's CPU in the message pipeline's benchmark. A PL/pgSQL function
-- keeps its compiled body and its statement's plan for the session, so a call is one lookup
-- of escopos. Same results, same owner, same privileges: CREATE OR REPLACE keeps the
-- policies and column defaults that use them, and each call still reads escopos, so a
-- changed or revoked scope counts from the next statement on, as before.
CREATE OR REPLACE FUNCTION servidores_servidos() RETURNS text[]
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
DECLARE
    s text[];
BEGIN
    SELECT e.servidores INTO s FROM public.escopos e WHERE e.papel = session_user;
    IF NOT FOUND THEN
        RETURN '{}'::text[];
    END IF;
    RETURN s;
END
$$;

CREATE OR REPLACE FUNCTION escopo_da_sessao() RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
DECLARE
    s text[] := public.servidores_servidos();
BEGIN
    IF s IS NULL THEN
        RETURN '*';
    END IF;
    IF cardinality(s) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN array_to_string(ARRAY(SELECT DISTINCT x FROM unnest(s) AS x ORDER BY x), ',');
END
$$;

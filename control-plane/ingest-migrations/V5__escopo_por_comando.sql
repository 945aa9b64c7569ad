-- Row-level security checked once per statement instead of once per row.
--
-- The policies called serve_servidor(servidor) for every row a statement touched: a
-- SECURITY DEFINER SQL function with its own search_path, which PostgreSQL runs as a query
-- of its own on each call. In the event relay (one insert of every event of a domain write)
-- that was a third of the ingest server's CPU. A scalar subquery of a function without
-- arguments is planned as an InitPlan: it runs once per statement, and each row only
-- compares its server with the resulting list.
--
-- servidores_servidos(): the servers the session's router login serves; NULL for all of
-- them, empty for a login without a scope (revoked, or not a router). SECURITY DEFINER so
-- routers need no access to `escopos`; `session_user` is the login.
CREATE FUNCTION servidores_servidos() RETURNS text[]
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT CASE WHEN EXISTS (SELECT 1 FROM public.escopos e WHERE e.papel = session_user)
                 THEN (SELECT e.servidores FROM public.escopos e WHERE e.papel = session_user)
                 ELSE '{}'::text[] END $$;
-- EXECUTE stays with PUBLIC (the default): the function tells a session only its own
-- login's scope, and only router logins and the control plane may connect to this
-- database. So a router login made during a rolling upgrade by a control plane of the
-- previous version (which grants serve_servidor only) works too.

-- A NULL list (every server) becomes the row's own server, which the row then matches.
DROP POLICY roteador ON inbox;
CREATE POLICY roteador ON inbox
    USING (servidor = ANY (coalesce((SELECT servidores_servidos()), ARRAY[servidor])));
DROP POLICY roteador ON inbox_atrasos;
CREATE POLICY roteador ON inbox_atrasos
    USING (servidor = ANY (coalesce((SELECT servidores_servidos()), ARRAY[servidor])));
DROP POLICY roteador ON eventos;
CREATE POLICY roteador ON eventos
    USING (servidor = ANY (coalesce((SELECT servidores_servidos()), ARRAY[servidor])));
DROP POLICY roteador ON relay_pendentes;
CREATE POLICY roteador ON relay_pendentes
    USING (servidor = ANY (coalesce((SELECT servidores_servidos()), ARRAY[servidor])));

-- serve_servidor stays, unused, while control planes of the previous version may still be
-- running: they grant it to the router logins they hand out. A later migration drops it.

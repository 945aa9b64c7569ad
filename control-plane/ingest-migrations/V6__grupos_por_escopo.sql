-- Consumer groups belong to the scope of the routers that keep them.
--
-- Cursors and members were open to every router login: a stolen login of a router scoped
-- to one server could move any group's cursors (events skipped or sent again) or join any
-- group as a ghost member that takes partitions and reads nothing. And a group read through
-- a scoped router advanced its cursors past events that router cannot see, which another
-- router of the group would then never send.
--
-- Now every cursor and member row records the scope of the login that made it (the list of
-- servers, or '*' for all), and a router login sees and changes only rows of its own
-- scope. A group is thus kept by the routers of one scope: its cursors only ever pass
-- events those routers see. Routers of another scope cannot read, move or join it; their
-- attempt to start it finds the cursors taken and says so.

-- The session's scope as text: '*' for every server, the sorted server names joined by ','
-- (server names are [a-z0-9-]), NULL for a login without a scope (it can keep no group).
CREATE FUNCTION escopo_da_sessao() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT CASE WHEN s IS NULL THEN '*'
                      WHEN cardinality(s) = 0 THEN NULL
                      ELSE array_to_string(ARRAY(SELECT DISTINCT x FROM unnest(s) AS x ORDER BY x), ',')
                 END
          FROM (SELECT public.servidores_servidos() AS s) AS sessao $$;
-- EXECUTE stays with PUBLIC, as for servidores_servidos(): it tells a session only its own
-- login's scope.

-- Rows from before this migration were kept by routers of unknown scope; they are taken to
-- be the usual all-server routers'. A group kept by scoped routers until now starts again
-- under a new name (its routers are told so).
ALTER TABLE cursores ADD COLUMN escopo text NOT NULL DEFAULT '*';
ALTER TABLE cursores ALTER COLUMN escopo SET DEFAULT escopo_da_sessao();
ALTER TABLE membros ADD COLUMN escopo text NOT NULL DEFAULT '*';
ALTER TABLE membros ALTER COLUMN escopo SET DEFAULT escopo_da_sessao();

-- The keys stay (grupo, particao) and (grupo, membro), so routers of the previous version
-- keep working during a rolling upgrade: their rows get their login's scope by default.
ALTER TABLE cursores ENABLE ROW LEVEL SECURITY;
CREATE POLICY roteador ON cursores USING (escopo = (SELECT escopo_da_sessao()));
ALTER TABLE membros ENABLE ROW LEVEL SECURITY;
CREATE POLICY roteador ON membros USING (escopo = (SELECT escopo_da_sessao()));

-- Router replicas share each database server's connection budget through leases. Every
-- router process (an instance of a registered router) renews its lease every few hundred
-- milliseconds, saying how many connections it wants on each server; the control plane
-- divides the routers' part of the budget (the server's budget minus the slice kept for
-- its own jobs) among the live leases in proportion to that demand. `reivindicado` is the
-- most the instance may be holding now: a lowered grant still counts at its old size until
-- the instance reports that it has shrunk, so the claims of a server's live leases never
-- add up to more than the routers' part. A lease not renewed by `expira_em` is dropped and
-- its share goes to the others.
CREATE TABLE concessoes (
    servidor      text NOT NULL REFERENCES servidores (nome) ON DELETE CASCADE,
    roteador      text NOT NULL REFERENCES roteadores (nome) ON DELETE CASCADE,
    instancia     text NOT NULL,
    -- The instance's request counter: an older request arriving late changes nothing.
    sequencia     bigint NOT NULL,
    demanda       integer NOT NULL CHECK (demanda >= 0),
    concedido     integer NOT NULL CHECK (concedido >= 0),
    reivindicado  integer NOT NULL CHECK (reivindicado >= 0),
    expira_em     timestamptz NOT NULL,
    PRIMARY KEY (servidor, roteador, instancia)
);
CREATE INDEX concessoes_roteador_idx ON concessoes (roteador, instancia);

-- Per-tenant token Evolution API gateways present on /webhooks/evolution/{slug}.
-- XChaCha20-Poly1305, associated data "tenant:<slug>:webhook-token".
ALTER TABLE empresas ADD COLUMN webhook_token_cifrado bytea;

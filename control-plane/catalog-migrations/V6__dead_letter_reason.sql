-- Why a webhook item was kept aside: no tenant owns the number, the tenant is suspended,
-- or the item itself can never be stored (its reason).
ALTER TABLE webhooks_nao_roteados ADD COLUMN motivo text;

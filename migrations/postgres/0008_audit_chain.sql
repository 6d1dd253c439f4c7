-- Version 8: the tamper-evident audit trail. Each tenant's records form a hash chain: a record
-- carries its place in the chain (seq), who acted (actor), its canonical JSON body (RFC 8785),
-- the previous record's hash and its own, SHA-256(previous hash || body), computed where the
-- head is advanced (on PostgreSQL in the same statement, so an append is one round trip). Records written
-- before this version have no seq and are in no chain. The head of each chain is kept per
-- tenant, so appends of different tenants never wait on one row. Checkpoints are signed
-- statements of a chain's head (Ed25519, the operator's key). Records and checkpoints are
-- append-only: triggers refuse UPDATE, DELETE and TRUNCATE.
ALTER TABLE airlock_audit ADD COLUMN seq BIGINT;
ALTER TABLE airlock_audit ADD COLUMN actor TEXT;
ALTER TABLE airlock_audit ADD COLUMN body TEXT;
ALTER TABLE airlock_audit ADD COLUMN prev_hash TEXT;
ALTER TABLE airlock_audit ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX airlock_audit_chain ON airlock_audit (tenant, seq) WHERE seq IS NOT NULL;
CREATE TABLE airlock_audit_heads (
    tenant TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE airlock_audit_checkpoints (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    at BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX airlock_audit_checkpoints_tenant ON airlock_audit_checkpoints (tenant, id);
CREATE FUNCTION airlock_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'airlock: % is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER airlock_audit_append_only BEFORE UPDATE OR DELETE ON airlock_audit
    FOR EACH ROW EXECUTE FUNCTION airlock_append_only();
CREATE TRIGGER airlock_audit_no_truncate BEFORE TRUNCATE ON airlock_audit
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_append_only();
CREATE TRIGGER airlock_audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON airlock_audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION airlock_append_only();
CREATE TRIGGER airlock_audit_checkpoints_no_truncate BEFORE TRUNCATE ON airlock_audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_append_only();

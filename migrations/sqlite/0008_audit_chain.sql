-- Version 8: the tamper-evident audit trail (see the PostgreSQL file for the whole story).
-- Records and checkpoints are append-only: triggers refuse UPDATE and DELETE.
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    at BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX airlock_audit_checkpoints_tenant ON airlock_audit_checkpoints (tenant, id);
CREATE TRIGGER airlock_audit_no_update BEFORE UPDATE ON airlock_audit
BEGIN SELECT RAISE(ABORT, 'airlock: airlock_audit is append-only'); END;
CREATE TRIGGER airlock_audit_no_delete BEFORE DELETE ON airlock_audit
BEGIN SELECT RAISE(ABORT, 'airlock: airlock_audit is append-only'); END;
CREATE TRIGGER airlock_audit_checkpoints_no_update BEFORE UPDATE ON airlock_audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'airlock: airlock_audit_checkpoints is append-only'); END;
CREATE TRIGGER airlock_audit_checkpoints_no_delete BEFORE DELETE ON airlock_audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'airlock: airlock_audit_checkpoints is append-only'); END;

-- Version 11: tenant schemas (Frictionless Table Schema, checked at load) and, per job, the
-- schema it runs under. A job keeps a copy of its schema's JSON, taken when it is submitted, so
-- changing or deleting a stored schema never changes a job already queued.
CREATE TABLE airlock_schemas (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
-- At most one default per tenant.
CREATE UNIQUE INDEX airlock_schemas_default ON airlock_schemas (tenant) WHERE is_default = 1;
ALTER TABLE airlock_schemas ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_schemas
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_jobs ADD COLUMN schema_id TEXT;
ALTER TABLE airlock_jobs ADD COLUMN schema_body TEXT;

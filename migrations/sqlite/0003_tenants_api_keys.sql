-- Version 3: registered tenants (with their plan) and their API keys. A key is stored only as
-- its SHA-256; the prefix (its first 12 characters) is kept to tell keys apart in listings.
ALTER TABLE airlock_tenants ADD COLUMN plan TEXT;
ALTER TABLE airlock_tenants ADD COLUMN created_at INTEGER;
CREATE TABLE airlock_api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX airlock_api_keys_sha256 ON airlock_api_keys (sha256);
CREATE INDEX airlock_api_keys_tenant ON airlock_api_keys (tenant, created_at);

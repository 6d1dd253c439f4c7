-- Version 5: direct-to-bucket uploads. A row is written when a tenant asks for an upload link
-- (the declared size and SHA-256, base64) and marked when the upload is completed into a job
-- with the same id. An upload never completed leaves an object no job references: the orphan
-- sweep deletes it.
CREATE TABLE airlock_uploads (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    object_key TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    file_name TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    completed_at INTEGER
);
CREATE INDEX airlock_uploads_tenant ON airlock_uploads (tenant, created_at);

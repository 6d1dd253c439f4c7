-- Version 9: row-level security. Every table that holds a tenant's data admits, to the role
-- `airlock_tenant`, only the rows of the tenant named by the transaction's `airlock.tenant`
-- setting (`SELECT set_config('airlock.tenant', $1, true)`); with none set, no rows at all.
-- Tenant-scoped work (the API, tenant-scoped commands) runs as `airlock_tenant`; supervisors
-- and the sweeper run as `airlock_service`, which may see every tenant (BYPASSRLS). The role
-- that runs `airlock migrate` owns the tables and is made a member of both. Creating the roles
-- needs a superuser (a BYPASSRLS role does); without it this migration stops and says so (README,
-- "Row-level security", has the two statements to run first).
DO $$
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'airlock_tenant') THEN
            CREATE ROLE airlock_tenant NOLOGIN NOBYPASSRLS;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'airlock_service') THEN
            CREATE ROLE airlock_service NOLOGIN BYPASSRLS;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    IF NOT pg_has_role(current_user, 'airlock_tenant', 'MEMBER')
       OR NOT pg_has_role(current_user, 'airlock_service', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT airlock_tenant, airlock_service TO %I', current_user);
        EXCEPTION WHEN unique_violation THEN NULL;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO airlock_tenant, airlock_service', current_schema());
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO airlock_tenant, airlock_service', current_schema());
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO airlock_tenant, airlock_service', current_schema());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'airlock: creating the roles airlock_tenant and airlock_service needs a superuser (BYPASSRLS does); create them first (README, "Row-level security") and run airlock migrate again';
END
$$;

ALTER TABLE airlock_jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_jobs
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_tenants
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_receipts ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_receipts
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_audit
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_audit_heads ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_audit_heads
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_audit_checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_audit_checkpoints
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_api_keys
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_uploads ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_uploads
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_webhooks ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_webhooks
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
ALTER TABLE airlock_webhook_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_webhook_events
    USING (tenant = current_setting('airlock.tenant', true))
    WITH CHECK (tenant = current_setting('airlock.tenant', true));
-- Deliveries and attempts name their endpoint; the endpoint names the tenant.
ALTER TABLE airlock_webhook_deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_webhook_deliveries
    USING (EXISTS (SELECT 1 FROM airlock_webhooks w WHERE w.id = endpoint_id
                   AND w.tenant = current_setting('airlock.tenant', true)))
    WITH CHECK (EXISTS (SELECT 1 FROM airlock_webhooks w WHERE w.id = endpoint_id
                   AND w.tenant = current_setting('airlock.tenant', true))
                AND EXISTS (SELECT 1 FROM airlock_webhook_events e WHERE e.id = event_id
                   AND e.tenant = current_setting('airlock.tenant', true)));
ALTER TABLE airlock_webhook_attempts ENABLE ROW LEVEL SECURITY;
CREATE POLICY airlock_own_rows ON airlock_webhook_attempts
    USING (EXISTS (SELECT 1 FROM airlock_webhooks w WHERE w.id = endpoint_id
                   AND w.tenant = current_setting('airlock.tenant', true)))
    WITH CHECK (EXISTS (SELECT 1 FROM airlock_webhooks w WHERE w.id = endpoint_id
                   AND w.tenant = current_setting('airlock.tenant', true)));

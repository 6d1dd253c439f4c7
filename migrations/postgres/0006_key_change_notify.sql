-- Version 6: a key's revocation (or deletion) is announced on the channel `airlock_keys` with the
-- key's id, so every `airlock serve` drops the key from its cache of authenticated keys. Only
-- `revoked_at` fires it: the once-a-minute `last_used_at` writes do not.
CREATE FUNCTION airlock_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('airlock_keys', OLD.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER airlock_api_keys_changed
    AFTER UPDATE OF revoked_at OR DELETE ON airlock_api_keys
    FOR EACH ROW EXECUTE FUNCTION airlock_key_changed();

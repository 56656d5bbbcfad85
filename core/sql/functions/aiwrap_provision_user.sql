-- The one provisioning of a user aiwrap has not seen (a chat or a profile change that
-- beat Clerk's user.created): the minimal user row and a profile with the default
-- budget, unless the user was deleted. Returns false, creating nothing, for a deleted
-- user. Takes the identity actor's per-user lock, transaction-scoped (PgBouncer-safe),
-- so a concurrent user.deleted cannot interleave; the statements after it take their
-- snapshots once it is held. The user row has no updated_at, so the next Clerk event
-- for the user fills it in.
CREATE OR REPLACE FUNCTION aiwrap_provision_user(p_user_id text, p_default_budget bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_user_id));
    IF EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = p_user_id) THEN
        RETURN false;
    END IF;
    INSERT INTO "user" (id) VALUES (p_user_id) ON CONFLICT (id) DO NOTHING;
    INSERT INTO user_profiles (user_id, monthly_token_budget)
    VALUES (p_user_id, p_default_budget) ON CONFLICT (user_id) DO NOTHING;
    RETURN true;
END
$$;

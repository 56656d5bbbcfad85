-- Applying a group of Clerk events in one call (workers/identity/apply.py): one round
-- trip per group, and plans cached in the server backend, which PgBouncer's
-- transaction mode allows, unlike prepared statements. `p_events` is a JSON
-- array of {kind, svix_id, user_id, at, email, first_name, last_name,
-- image_url, display_name}, kind 'changed' or 'deleted', `at` the event's
-- updated_at or deleted_at. One row comes back per event, in order.
CREATE OR REPLACE FUNCTION aiwrap_apply_clerk_events(p_events jsonb, p_default_budget bigint)
RETURNS TABLE (duplicate boolean, changed boolean)
LANGUAGE plpgsql
-- Each statement looks up or writes one row by key: the generic plan is the
-- best plan, so skip the five custom plans Postgres would make first.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    ev record;
BEGIN
    -- The identity actor's per-user lock, for every user of the group in key
    -- order: two groups that share users never wait on each other in a cycle.
    -- The statements below each take a new snapshot, so they see everything
    -- the locks' last holders committed.
    PERFORM pg_advisory_xact_lock(k.key)
       FROM (SELECT DISTINCT hashtext(e->>'user_id') AS key
               FROM jsonb_array_elements(p_events) AS e ORDER BY 1) AS k;
    FOR ev IN
        SELECT * FROM ROWS FROM (jsonb_to_recordset(p_events) AS (
                   kind text, svix_id text, user_id text, at timestamptz, email text,
                   first_name text, last_name text, image_url text, display_name text
               )) WITH ORDINALITY AS t
         ORDER BY t.ordinality
    LOOP
        -- Only a new delivery acts, so a redelivery does nothing (the guards
        -- below would make it a no-op anyway).
        INSERT INTO clerk_deliveries (svix_id) VALUES (ev.svix_id) ON CONFLICT (svix_id) DO NOTHING;
        duplicate := NOT FOUND;
        changed := false;
        IF duplicate THEN
            NULL;
        ELSIF ev.kind = 'deleted' THEN
            DELETE FROM "user" AS u WHERE u.id = ev.user_id;
            changed := FOUND;
            INSERT INTO user_tombstones AS t (user_id, deleted_at) VALUES (ev.user_id, ev.at)
            ON CONFLICT (user_id) DO UPDATE SET deleted_at = GREATEST(t.deleted_at, EXCLUDED.deleted_at);
        -- A delete is final. Clerk never gives a deleted user's id to anyone again, so a
        -- create or update for it, older or newer than the delete, is a stale retry or
        -- a mistake: it applies to nothing, as chat, usage and history refuse the user.
        ELSIF NOT EXISTS (SELECT 1 FROM user_tombstones AS t WHERE t.user_id = ev.user_id) THEN
            INSERT INTO "user" AS u (id, email, first_name, last_name, image_url, updated_at)
            VALUES (ev.user_id, ev.email, ev.first_name, ev.last_name, ev.image_url, ev.at)
            ON CONFLICT (id) DO UPDATE SET
                email = EXCLUDED.email,
                first_name = EXCLUDED.first_name,
                last_name = EXCLUDED.last_name,
                image_url = EXCLUDED.image_url,
                updated_at = EXCLUDED.updated_at
            WHERE u.updated_at IS NULL OR u.updated_at < EXCLUDED.updated_at;
            changed := FOUND;
            IF changed THEN
                -- The first creation makes the profile; later events never reset it.
                INSERT INTO user_profiles (user_id, display_name, monthly_token_budget)
                VALUES (ev.user_id, ev.display_name, p_default_budget)
                ON CONFLICT (user_id) DO NOTHING;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

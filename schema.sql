-- aiwrap schema. The contract is the TypeScript starter's Drizzle schema: the
-- four tables below keep its names, types, defaults, indexes and check exactly.
--
-- Every statement is idempotent, because users upgrade in place: `aiwrap migrate`
-- applies this whole file in one transaction, and applying it to a database that
-- already has it changes nothing. Later changes go at the end, written so that
-- they also apply to an existing database (ADD COLUMN IF NOT EXISTS, etc.).

-- Local mirror of Clerk identity; id is Clerk's user id.
CREATE TABLE IF NOT EXISTS "user" (
    id          text PRIMARY KEY,
    email       text,
    first_name  text,
    last_name   text,
    image_url   text,
    updated_at  timestamptz,  -- staleness key: Clerk's data.updated_at
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One profile per user: AI-app preferences and the soft monthly token budget.
CREATE TABLE IF NOT EXISTS user_profiles (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id               text NOT NULL
                          CONSTRAINT user_profiles_user_id_unique UNIQUE
                          CONSTRAINT user_profiles_user_id_user_id_fk
                          REFERENCES "user" (id) ON DELETE CASCADE,
    display_name          text,
    default_model         text NOT NULL DEFAULT 'gpt-4o-mini',
    monthly_token_budget  bigint NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_profile_model ON user_profiles (default_model);

-- Append-only token meter: one row per upstream LLM call.
CREATE TABLE IF NOT EXISTS token_usage (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            text NOT NULL
                       CONSTRAINT token_usage_user_id_user_id_fk
                       REFERENCES "user" (id) ON DELETE CASCADE,
    model              text NOT NULL,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    cost_microcents    bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_usage_user_time ON token_usage (user_id, created_at);
CREATE INDEX IF NOT EXISTS idx_usage_model ON token_usage (model);

-- Append-only prompt/completion history: the auditable record of every exchange.
CREATE TABLE IF NOT EXISTS prompt_logs (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            text NOT NULL
                       CONSTRAINT prompt_logs_user_id_user_id_fk
                       REFERENCES "user" (id) ON DELETE CASCADE,
    model              text NOT NULL,
    prompt             text NOT NULL,
    completion         text,  -- NULL while a streamed completion is in flight
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    latency_ms         integer,
    status             text NOT NULL DEFAULT 'ok',
    metadata           jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prompt_logs_status_check CHECK (status IN ('ok', 'error', 'filtered'))
);
CREATE INDEX IF NOT EXISTS idx_log_user_time ON prompt_logs (user_id, created_at);

-- ---------------------------------------------------------------------------
-- Additions beyond the starter. Each applies to an existing database.
-- ---------------------------------------------------------------------------

-- A deleted Clerk user leaves a tombstone holding the delete's time, so that no
-- create or update older than the delete can bring the user back.
CREATE TABLE IF NOT EXISTS user_tombstones (
    user_id     text PRIMARY KEY,
    deleted_at  timestamptz NOT NULL
);

-- Svix deliveries already applied, so a redelivery does no work twice. Only an
-- optimisation: applying an event is idempotent without it.
CREATE TABLE IF NOT EXISTS clerk_deliveries (
    svix_id     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Each upstream call is metered against the exchange it served; the unique
-- index is what makes metering exactly-once when a job is redelivered.
ALTER TABLE token_usage ADD COLUMN IF NOT EXISTS prompt_log_id uuid;
CREATE UNIQUE INDEX IF NOT EXISTS idx_usage_prompt_log ON token_usage (prompt_log_id);
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint WHERE conname = 'token_usage_prompt_log_id_prompt_logs_id_fk'
    ) THEN
        ALTER TABLE token_usage
            ADD CONSTRAINT token_usage_prompt_log_id_prompt_logs_id_fk
            FOREIGN KEY (prompt_log_id) REFERENCES prompt_logs (id) ON DELETE CASCADE;
    END IF;
END
$$;

-- Opening a chat's exchange, in one round trip (workers/chat.py): a job whose
-- row is finalised gets it back; a job back after a crash gets its open row
-- again, with the attempt counted; a new job provisions its user (never one
-- that was deleted), then is refused, or gets its row. The per-user advisory
-- lock is the identity actor's, so a concurrent user.deleted cannot interleave.
CREATE OR REPLACE FUNCTION aiwrap_begin_chat(
    p_id uuid, p_user_id text, p_model text, p_prompt text, p_metadata jsonb,
    p_default_budget bigint, p_priced boolean, p_cancelled boolean,
    p_month_start timestamptz, p_month_end timestamptz
) RETURNS TABLE (
    outcome text, completion text, status text, prompt_tokens integer,
    completion_tokens integer, metadata jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    found_log prompt_logs%ROWTYPE;
BEGIN
    SELECT * INTO found_log FROM prompt_logs l WHERE l.id = p_id FOR UPDATE;
    IF FOUND THEN
        IF found_log.completion IS NOT NULL THEN
            RETURN QUERY SELECT 'finished', found_log.completion, found_log.status,
                                found_log.prompt_tokens, found_log.completion_tokens,
                                found_log.metadata;
            RETURN;
        END IF;
        UPDATE prompt_logs l
           SET metadata = l.metadata || jsonb_build_object(
                   'attempt', COALESCE((l.metadata->>'attempt')::int, 1) + 1)
         WHERE l.id = p_id;
        RETURN QUERY SELECT 'started', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(p_user_id));
    IF EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = p_user_id) THEN
        RETURN QUERY SELECT 'user_deleted', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    INSERT INTO "user" (id) VALUES (p_user_id) ON CONFLICT (id) DO NOTHING;
    INSERT INTO user_profiles (user_id, monthly_token_budget)
    VALUES (p_user_id, p_default_budget) ON CONFLICT (user_id) DO NOTHING;
    IF p_cancelled THEN
        RETURN QUERY SELECT 'cancelled', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    IF NOT p_priced THEN
        RETURN QUERY SELECT 'model_not_priced', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    IF EXISTS (
        SELECT 1 FROM user_profiles p
         WHERE p.user_id = p_user_id AND p.monthly_token_budget > 0
           AND COALESCE((SELECT sum(u.prompt_tokens + u.completion_tokens)
                           FROM token_usage u
                          WHERE u.user_id = p_user_id
                            AND u.created_at >= p_month_start AND u.created_at < p_month_end), 0)
               >= p.monthly_token_budget
    ) THEN
        RETURN QUERY SELECT 'budget_exceeded', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    INSERT INTO prompt_logs (id, user_id, model, prompt, metadata)
    VALUES (p_id, p_user_id, p_model, p_prompt, p_metadata);
    RETURN QUERY SELECT 'started', NULL::text, NULL::text, 0, 0, NULL::jsonb;
END
$$;

-- Applying a group of Clerk events in one call (workers/identity.py): one round
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
        ELSIF NOT EXISTS (
            SELECT 1 FROM user_tombstones AS t WHERE t.user_id = ev.user_id AND t.deleted_at >= ev.at
        ) THEN
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

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

-- The PL/pgSQL and SQL functions are in core/sql/functions/, one file each; `aiwrap
-- migrate` applies them after this file, in the same transaction.

-- An exchange as the API shows it (core/history.py). An in-flight row keeps status's
-- default 'ok' with a NULL completion and metadata.state 'running'; this view reports
-- it as 'running'. The cost is the exchange's one token_usage row, 0 before it is
-- metered. `row_id` is the uuid, for keyset pagination; `id` is its text.
CREATE OR REPLACE VIEW aiwrap_exchanges AS
SELECT p.id::text AS id, p.created_at, p.model, p.prompt, p.completion,
       CASE WHEN p.status = 'ok' AND p.completion IS NULL AND p.metadata->>'state' = 'running'
            THEN 'running' ELSE p.status END AS status,
       p.prompt_tokens, p.completion_tokens, COALESCE(u.cost_microcents, 0) AS cost_microcents,
       p.latency_ms, p.metadata->>'finish_reason' AS finish_reason,
       p.user_id, p.id AS row_id
  FROM prompt_logs p LEFT JOIN token_usage u ON u.prompt_log_id = p.id;

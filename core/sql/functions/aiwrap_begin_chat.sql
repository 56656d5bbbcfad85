-- Opening a chat's exchange, in one round trip (workers/chat/record.py): a job whose
-- row is finalised gets it back; a job back after a crash gets its open row
-- again, with the attempt counted; a new job provisions its user (never one
-- that was deleted: aiwrap_provision_user), then is refused, or gets its row.
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
    IF NOT aiwrap_provision_user(p_user_id, p_default_budget) THEN
        RETURN QUERY SELECT 'user_deleted', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    IF p_cancelled THEN
        RETURN QUERY SELECT 'cancelled', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    IF NOT p_priced THEN
        RETURN QUERY SELECT 'model_not_priced', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    IF aiwrap_over_budget(p_user_id, p_month_start, p_month_end) THEN
        RETURN QUERY SELECT 'budget_exceeded', NULL::text, NULL::text, 0, 0, NULL::jsonb;
        RETURN;
    END IF;
    INSERT INTO prompt_logs (id, user_id, model, prompt, metadata)
    VALUES (p_id, p_user_id, p_model, p_prompt, p_metadata);
    RETURN QUERY SELECT 'started', NULL::text, NULL::text, 0, 0, NULL::jsonb;
END
$$;

-- Finalise the row and meter the call in one statement: the usage row exists exactly
-- when the row is finalised, and a second run can add neither.
WITH finished AS (
    UPDATE prompt_logs
       SET completion = %(completion)s, prompt_tokens = %(prompt_tokens)s,
           completion_tokens = %(completion_tokens)s, latency_ms = %(latency_ms)s,
           status = %(status)s,
           metadata = %(metadata)s::jsonb
               || jsonb_strip_nulls(jsonb_build_object('attempt', metadata->'attempt'))
     WHERE id = %(id)s AND completion IS NULL
 RETURNING id, user_id, model
)
INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens, cost_microcents,
                         prompt_log_id)
SELECT user_id, model, %(prompt_tokens)s, %(completion_tokens)s, %(cost_microcents)s, id
  FROM finished
 WHERE %(metered)s
ON CONFLICT (prompt_log_id) DO NOTHING

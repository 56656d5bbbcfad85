-- The one budget check: has the user used at least their monthly token budget in the
-- month [p_month_start, p_month_end)? A budget of 0 is no cap, and a user with no
-- profile has none. Ingest's admission (core/metering.py) and aiwrap_begin_chat ask it.
-- Plain SQL and STABLE, so the planner inlines it into the statement that calls it.
CREATE OR REPLACE FUNCTION aiwrap_over_budget(
    p_user_id text, p_month_start timestamptz, p_month_end timestamptz
) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT COALESCE((
        SELECT p.monthly_token_budget > 0
               AND COALESCE((SELECT sum(u.prompt_tokens + u.completion_tokens)
                               FROM token_usage u
                              WHERE u.user_id = p_user_id
                                AND u.created_at >= p_month_start
                                AND u.created_at < p_month_end), 0)
                   >= p.monthly_token_budget
          FROM user_profiles p
         WHERE p.user_id = p_user_id
    ), false)
$$;

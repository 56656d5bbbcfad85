-- A user's tokens and cost in the month [start, end), by model.
SELECT model,
       sum(prompt_tokens + completion_tokens)::bigint AS tokens,
       sum(cost_microcents)::bigint AS cost_microcents
  FROM token_usage
 WHERE user_id = %(user_id)s AND created_at >= %(start)s AND created_at < %(end)s
 GROUP BY model
 ORDER BY model

-- The user's exchange with this id, metadata included (none: no such chat, or not theirs).
SELECT e.id, e.created_at, e.model, e.prompt, e.completion, e.status, e.prompt_tokens,
       e.completion_tokens, e.cost_microcents, e.latency_ms, e.finish_reason, p.metadata
  FROM aiwrap_exchanges e JOIN prompt_logs p ON p.id = e.row_id
 WHERE e.row_id = %(id)s AND e.user_id = %(user_id)s

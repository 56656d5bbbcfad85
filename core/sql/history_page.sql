-- A page of history, newest first. `created_at <= before_at` lets idx_log_user_time
-- bound the scan; the row comparison breaks ties on id, so equal timestamps never gap
-- or repeat.
SELECT e.id, e.created_at, e.model, e.prompt, e.completion, e.status, e.prompt_tokens,
       e.completion_tokens, e.cost_microcents, e.latency_ms, e.finish_reason
  FROM aiwrap_exchanges e
 WHERE e.user_id = %(user_id)s
   AND (%(before_at)s::timestamptz IS NULL
        OR (e.created_at <= %(before_at)s
            AND (e.created_at, e.row_id) < (%(before_at)s, %(before_id)s::uuid)))
 ORDER BY e.created_at DESC, e.row_id DESC
 LIMIT %(limit)s

-- An exchange refused before any model call: logged, finished, never metered.
INSERT INTO prompt_logs (id, user_id, model, prompt, completion, status, latency_ms, metadata)
VALUES (%(id)s, %(user_id)s, %(model)s, %(prompt)s, '', 'error', 0, %(metadata)s)
ON CONFLICT (id) DO NOTHING

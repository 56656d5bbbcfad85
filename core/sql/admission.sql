-- What POST /v1/chat needs to know before it accepts a chat, in one round trip:
-- whether the user was deleted, their default model (NULL without a profile), and
-- whether they are already at their budget (the one budget check, aiwrap_over_budget).
SELECT EXISTS (SELECT 1 FROM user_tombstones t WHERE t.user_id = %(user_id)s) AS deleted,
       (SELECT p.default_model FROM user_profiles p WHERE p.user_id = %(user_id)s)
           AS default_model,
       aiwrap_over_budget(%(user_id)s, %(start)s, %(end)s) AS over_budget

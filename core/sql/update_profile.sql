-- Set what was given, keep what was not; one statement, so no read-then-write race.
UPDATE user_profiles
   SET monthly_token_budget = COALESCE(%(monthly_token_budget)s, monthly_token_budget),
       default_model = COALESCE(%(default_model)s, default_model)
 WHERE user_id = %(user_id)s
RETURNING user_id, monthly_token_budget, default_model

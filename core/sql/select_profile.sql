-- The settings chat uses for a user; none for a user aiwrap has not seen.
SELECT user_id, monthly_token_budget, default_model FROM user_profiles WHERE user_id = %(user_id)s

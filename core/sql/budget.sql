-- A user's monthly token budget (0: no cap); no row for a user aiwrap has not seen.
SELECT monthly_token_budget FROM user_profiles WHERE user_id = %(user_id)s

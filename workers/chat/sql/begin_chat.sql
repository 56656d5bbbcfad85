-- Open a chat's exchange: see core/sql/functions/aiwrap_begin_chat.sql. One statement,
-- so one round trip, with its plans cached in the server backend (PgBouncer-safe).
SELECT * FROM aiwrap_begin_chat(
    %(id)s, %(user_id)s, %(model)s, %(prompt)s, %(metadata)s, %(default_budget)s,
    %(priced)s, %(cancelled)s, %(month_start)s, %(month_end)s)

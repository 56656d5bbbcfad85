-- Serializes concurrent migrations; transaction-scoped, so PgBouncer-safe.
SELECT pg_advisory_xact_lock(hashtext('aiwrap.migrate'))

-- Apply a group of Clerk events in one call of aiwrap_apply_clerk_events
-- (core/sql/functions), which takes the per-user lock for each user of the group, in
-- key order, then applies the events one by one. One round trip, one statement to
-- plan; the function's own statements are planned once per server backend.
SELECT duplicate, changed FROM aiwrap_apply_clerk_events(%(events)s::jsonb, %(budget)s)

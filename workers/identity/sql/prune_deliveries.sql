-- Svix retries a delivery for about 28 hours; remembering applied ones for three days
-- is plenty, and the dedupe is only an optimisation anyway.
DELETE FROM clerk_deliveries WHERE applied_at < now() - interval '3 days'

"""The whole stack on one machine: embedded Postgres and Redis, a local model server."""

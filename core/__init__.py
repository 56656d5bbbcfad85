"""The core that ingest and the workers share: settings, logging, the database pool, errors,
the queues and the jobs they carry, a chat's Redis layout, metering, users and history."""

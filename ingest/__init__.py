"""aiwrap ingest: the HTTP edge that verifies, authenticates and enqueues."""

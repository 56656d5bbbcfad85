"""aiwrap workers: the Dramatiq actors and everything that touches Postgres or the model."""

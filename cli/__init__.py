"""The `aiwrap` command."""

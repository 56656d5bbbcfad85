"""The Clerk-sync actor (being written: see issue 3)."""

from typing import Any


def declare(broker: Any, runtime: Any) -> None:
    """Declare the identity actor on `broker`."""

"""Requests refused by a limit (a 429), counted by the limit: exported with /metrics."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

LIMITED: Final = Counter(
    "aiwrap_limited_total",
    "Requests refused with a 429, by the limit they hit (streams, requests_per_minute).",
    ["limit"],
)

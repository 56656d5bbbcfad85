"""What a chat's model call brought back, and how the exchange ended."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from core import streams
from core.messages import fold_tool_deltas

#: Tokens as the estimate counts them when the upstream sends no usage.
TOKEN: Final = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks), for when usage is missing."""
    return len(TOKEN.findall(text))


@dataclass
class Reply:
    """What came back from the model, kept as it arrives so a cancel loses nothing."""

    pieces: list[str] = field(default_factory=list)
    length: int = 0  # of the text in pieces, kept as they arrive
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None
    ttft_ms: float | None = None
    opened: bool = False  # the upstream accepted the call, so it is metered
    upstream_calls: int = 0
    error: tuple[str, str] | None = None
    refusal: str | None = None
    cancelled: bool = False
    #: The tool calls so far, assembled from their deltas, by index.
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Tool-call deltas received, in order: a rerun skips those already published.
    tool_deltas: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add_tool_deltas(self, deltas: list[dict[str, Any]]) -> None:
        fold_tool_deltas(self.tool_calls, deltas)

    def assembled_tool_calls(self) -> list[dict[str, Any]]:
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]


@dataclass(frozen=True)
class Outcome:
    """How an exchange ended: its status and the terminal stream event."""

    status: str
    event: streams.EventName
    data: dict[str, Any]


def outcome_of_row(row: dict[str, Any]) -> Outcome:
    """The terminal event of an exchange already finalised, rebuilt from its row."""
    meta = row["metadata"] or {}
    error = meta.get("error")
    if row["status"] == "error" and isinstance(error, dict):
        return Outcome(
            "error", streams.ERROR, {"code": error.get("code"), "message": error.get("message")}
        )
    return Outcome(
        row["status"],
        streams.DONE,
        {
            "status": row["status"],
            "finish_reason": meta.get("finish_reason"),
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost_microcents": meta.get("cost_microcents", 0),
        },
    )


def since(iso: str) -> float | None:
    """Milliseconds since an ISO timestamp, or None when it does not parse."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - then).total_seconds() * 1e3, 3)

"""Text as Postgres can store it: faithfully, with what could not be stored marked.

Postgres refuses a NUL character in `text` and in `jsonb`, and psycopg cannot encode a
lone UTF-16 surrogate; both can come from a model's stream or a caller's JSON. Each is
replaced by U+FFFD (the replacement character, where the text had something it could
not keep), and the caller records how many in the row's metadata, so the record says
that it differs from what was sent.
"""

from __future__ import annotations

import re
from typing import Any, Final

#: What Postgres and psycopg cannot take in a string.
UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT: Final = "\ufffd"


def storable(text: str) -> tuple[str, int]:
    """`text` with every unstorable character replaced, and how many were."""
    if UNSTORABLE.search(text) is None:  # nearly always: one scan in C, no copy
        return text, 0
    return UNSTORABLE.subn(REPLACEMENT, text)


def storable_json(value: Any) -> Any:
    """A JSON-shaped value with every string in it (keys too) made storable."""
    if isinstance(value, str):
        return storable(value)[0]
    if isinstance(value, dict):
        return {storable_json(k): storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    return value


def replaced_counts(**texts: str) -> dict[str, int]:
    """For metadata: how many characters of each named text were replaced, if any were."""
    counts = {name: storable(text)[1] for name, text in texts.items()}
    return {name: n for name, n in counts.items() if n}

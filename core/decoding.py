"""Decoding a body or a job into its typed model, with one message for a bad field.

A field that fails gets `InvalidInput(field, reason)`, naming it as the caller wrote it
(`messages[0].role`), the same wherever it is caught: ingest answers it 400, a worker
dead-letters the job.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

import msgspec

from .errors import InvalidInput

T = TypeVar("T")

SURROGATE = re.compile("[\ud800-\udfff]")
_AT = re.compile(r"^(?P<why>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?P<kind>missing required|unknown) field `(?P<name>[^`]+)`")


def invalid_input(error: msgspec.ValidationError, root: str) -> InvalidInput:
    """The field a msgspec error is about (`messages[0].role`, under `root` when the
    value was a part of something larger), and what is wrong with it."""
    found = _AT.match(str(error))
    assert found is not None  # the pattern matches any text
    why, path = found["why"], found["path"] or ""
    named = _NAMED.search(why)
    if named:
        path = f"{path}.{named['name']}"
        why = "required." if named["kind"] == "missing required" else "unknown field."
    if root in ("body", "event", "job"):  # the whole value: its fields are top-level names
        return InvalidInput(path.removeprefix(".") or root, why)
    return InvalidInput(f"{root}{path}", why)


def decode(model: type[T], body: bytes, *, root: str = "body") -> T:
    """`body` (JSON) as a `model`; raise InvalidInput naming the field, or ValueError for
    text that is not a strict JSON object (no NaN, no lone surrogates, nesting bounded)."""
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as error:
        found = invalid_input(error, root)
        if found.field == root:  # the whole value is of the wrong type
            raise InvalidInput(root, "must be a JSON object.", code="invalid_json") from None
        if found.reason == "unknown field." and found.field.isidentifier():
            names = ", ".join(sorted(f.name for f in msgspec.structs.fields(model)))  # type: ignore[arg-type]
            raise InvalidInput(found.field, f"unknown field; this takes {names}.") from None
        raise found from None
    except (msgspec.DecodeError, RecursionError) as error:  # RecursionError: absurd nesting
        if (culprit := _not_strict(body, root)) is not None:
            raise culprit from None
        raise ValueError(str(error)) from None


def _not_strict(body: bytes, root: str) -> InvalidInput | None:
    """For a body strict JSON refuses, the field whose value made it so, if Python's
    lenient parser can find one: a lone surrogate (`"\\ud800"`) or NaN and Infinity."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str) and SURROGATE.search(item):
            return InvalidInput(path or root, "holds a lone UTF-16 surrogate, which is not text.")
        if isinstance(item, float) and not math.isfinite(item):
            return InvalidInput(path or root, "must be a finite number.")
        if isinstance(item, dict):
            for key in item:
                if SURROGATE.search(key):
                    name = f"{path}.{key}" if path else key
                    return InvalidInput(name, "a field name holds a lone UTF-16 surrogate.")
            stack += [(f"{path}.{k}" if path else k, v) for k, v in reversed(item.items())]
        elif isinstance(item, list):
            stack += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item)))]
    return None


def convert(model: type[T], value: Any, *, root: str, error: type[InvalidInput]) -> T:
    """A decoded message argument as a `model`; raise `error` naming the field."""
    try:
        return msgspec.convert(value, model)
    except msgspec.ValidationError as failure:
        found = invalid_input(failure, root)
        raise error(found.field, found.reason) from None

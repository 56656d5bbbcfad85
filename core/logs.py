"""Logging: structlog renders everything, aiwrap's own lines and its libraries'.

JSON by default, one object a line; readable console output for `aiwrap dev`.
Request ids (ingest) and message ids (workers) are bound through contextvars.
Secrets never reach the output: a processor redacts them by key and by shape.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from .redaction import redact_event


class _UtcTimestamp:
    """What TimeStamper(fmt="iso", utc=True) adds, with the date and time formatted
    once a second rather than for every line."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        cached = self._cached  # one read: threads may replace it meanwhile
        if cached[0] != second:
            cached = self._cached = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        event_dict["timestamp"] = f"{cached[1]}.{micros:06d}Z"
        return event_dict


def _fallback(value: Any) -> Any:
    return repr(value)


def _json_line(event_dict: Any) -> bytes:
    try:
        line: bytes = orjson.dumps(event_dict, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # e.g. an integer past 64 bits, which orjson refuses
        line = json.dumps(event_dict, default=_fallback).encode()
    return line


def _render_json(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    return _json_line(event_dict).decode()


#: One lock for every line written, ours and the libraries', so none interleave.
_WRITE_LOCK = threading.RLock()
# As logging does for its handlers' locks: a child forked while another thread
# was writing must not inherit the lock held.
os.register_at_fork(after_in_child=_WRITE_LOCK._at_fork_reinit)  # type: ignore[attr-defined]


class _StderrLogger:
    """Writes each rendered line whole to whatever sys.stderr is now."""

    def __init__(self, name: str) -> None:
        self.name = name  # what add_logger_name reads

    def msg(self, line: str) -> None:
        with _WRITE_LOCK:
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(name: str = "aiwrap", *_args: Any) -> _StderrLogger:
    return _StderrLogger(name)


#: What an actor logs, at debug, as it is called (Dramatiq's Actor.__call__; fenced in
#: workers/fence.py): the arguments themselves.
ACTOR_RECEIVED = "Received args=%r kwargs=%r."


class _ConcealMessages(logging.Filter):
    """Dramatiq logs a message as its actor call with its arguments ("Failed to process
    message apply_clerk_event('msg_...', {...})"), and an actor logs the arguments it
    receives: Clerk payloads, prompts. Those lines keep what identifies the message, the
    actor and the message id, and never the arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, tuple):
            return True
        if record.msg == ACTOR_RECEIVED and len(record.args) == 2:
            args, kwargs = record.args
            record.msg = "Received %d arguments and %d keyword arguments."
            record.args = (len(args), len(kwargs))  # type: ignore[arg-type]
        elif record.name.startswith("dramatiq"):
            record.args = tuple(_identify(arg) for arg in record.args)
        return True


def _identify(value: Any) -> Any:
    # Duck-typed: a Message and the MessageProxy around it both have these two.
    actor_name = getattr(value, "actor_name", None)
    message_id = getattr(value, "message_id", None)
    if isinstance(actor_name, str) and isinstance(message_id, str):
        return f"{actor_name}[{message_id}]"
    return value


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so a redirected stderr is honoured."""

    def createLock(self) -> None:
        self.lock = _WRITE_LOCK

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_configured: tuple[str, str] | None = None


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Render aiwrap's lines and stdlib logging's (Dramatiq, uvicorn, psycopg) alike.

    aiwrap's own lines go straight from structlog to stderr: ingest writes one per
    request, and stdlib logging (a LogRecord, a caller lookup, a formatter) would
    cost more than the request itself. Libraries log through stdlib logging, whose
    handler runs the same processors and renderer, so every line has one shape.
    """
    global _configured
    if _configured == (log_format, level):
        return
    _configured = (log_format, level)

    before: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.format_exc_info,
        redact_event,
        structlog.stdlib.add_logger_name,
    ]
    after: list[structlog.types.Processor] = [
        _UtcTimestamp(),
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else _render_json
    )
    structlog.configure(
        processors=[
            *before,
            structlog.processors.add_log_level,
            *after,
            renderer,
        ],
        logger_factory=_stderr_logger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.ExtraAdder(),
            *before,
            structlog.stdlib.add_log_level,
            *after,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.addFilter(_ConcealMessages())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that install their own handlers would print twice.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq", "psycopg", "pgserver"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    # Quiet by default; one line per request comes from our own middleware.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx and httpx2 log every request's URL at info: the model endpoint's included.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return aiwrap's logger for a module; its lines carry `name` as `logger`."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


class TurnLog:
    """A log for a line written so often that handling each line as it comes would
    cost more than the work it records: ingest's line per request.

    `info(event, **fields)` only keeps the line. The first line of an event-loop
    turn asks the loop to call `flush` once the turn's callbacks have run: flush
    runs every line kept through the one processor chain configure_logging set
    up for every line (redaction, level, timestamp, the renderer), in one tight
    loop, and writes them in one write. A line reaches the output within a turn,
    well under a millisecond while serving. It carries what the caller passes, not
    the request's contextvars (the turn ends outside any request). Without a
    running loop it writes at once. Only the loop's own thread may log through it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = _StderrLogger(name)
        self.held: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        level = _configured[1] if _configured else "INFO"
        return logging.getLevelNamesMapping()[level] <= logging.INFO

    def info(self, event: str, **fields: Any) -> None:
        fields["event"] = event
        self.held.append(fields)
        if len(self.held) > 1:
            return
        try:
            # In an empty context: the line carries the request's fields, not whatever
            # the first request of the turn had bound.
            asyncio.get_running_loop().call_soon(self.flush, context=contextvars.Context())
        except RuntimeError:  # no running loop
            self.flush()

    def flush(self) -> None:
        held, self.held = self.held, []
        if not held or not self.enabled:
            return
        processors = structlog.get_config()["processors"]
        lines = []
        for fields in held:
            line: Any = fields
            for processor in processors:
                line = processor(self.output, "info", line)
            lines.append(line)
        self.output.msg("\n".join(lines))

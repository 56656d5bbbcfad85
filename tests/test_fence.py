"""The Dramatiq internals aiwrap copies or extends are the ones it was written against."""

from __future__ import annotations

from pathlib import Path

import pytest
from dramatiq.middleware import Middleware

from core.errors import ConfigurationError
from ingest.enqueue import Enqueuer
from workers import fence


def test_the_installed_dramatiq_is_the_one_aiwrap_mirrors() -> None:
    assert fence.drift() == []


def test_a_changed_dispatch_script_is_reported_with_what_to_review(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    changed = tmp_path / "dispatch.lua"
    changed.write_text("-- a newer Dramatiq's script\n")
    (what, where, _read, recorded), *rest = fence.FENCED
    monkeypatch.setattr(fence, "FENCED", ((what, where, changed.read_text, recorded), *rest))
    [line] = fence.drift()
    assert "dispatch.lua changed" in line and "ingest/enqueue.lua" in line


def test_the_dependency_is_pinned_to_the_minor_release_the_digests_record() -> None:
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"dramatiq[redis]==2.2.*"' in pyproject


class Stamping(Middleware):
    """A middleware that changes every message before it is enqueued."""

    def before_enqueue(self, broker: object, message: object, delay: object) -> None:
        pass


def test_the_enqueuer_refuses_a_middleware_whose_enqueue_hooks_it_would_skip() -> None:
    with pytest.raises(ConfigurationError, match="Stamping defines before_enqueue"):
        Enqueuer(redis=None, middleware=[Stamping()])  # type: ignore[arg-type]

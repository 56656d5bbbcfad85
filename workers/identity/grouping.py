"""Applying the events of every identity actor call in a process, many per transaction."""

from __future__ import annotations

import asyncio
import time

import psycopg

from core.faults import is_transient
from core.jobs import UserChanged, UserDeleted
from core.logs import get_logger

from ..runtime import Runtime
from .apply import Outcome, apply_change, apply_changes, prune_deliveries

log = get_logger(__name__)

#: Most events applied in one transaction.
MAX_GROUP = 64
#: Seconds between prunes, per worker process.
PRUNE_EVERY_S = 600.0


class GroupApplier:
    """Applies the events of every actor call in this process, many per transaction.

    A worker process has one database connection, and an event costs little
    more than the round trip and the commit it waits for. So events that
    arrive while a transaction is in flight wait for it and then go together
    in the next one: one round trip and one commit for all of them. An idle
    system still applies each event at once.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pending: list[tuple[str, UserChanged | UserDeleted, asyncio.Future[Outcome]]] = []
        self.draining: asyncio.Task[None] | None = None
        self.next_prune = time.monotonic()

    async def apply(self, svix_id: str, change: UserChanged | UserDeleted) -> Outcome:
        """Apply one event; return once its transaction has committed."""
        applied: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((svix_id, change, applied))
        if self.draining is None:
            self.draining = asyncio.create_task(self._drain())
        return await applied

    async def _drain(self) -> None:
        try:
            # Events that arrive during any await here wait in `pending`, so
            # the loop ends only once no await has come between its check of
            # `pending` and `draining` going back to None: none is left behind.
            while self.pending:
                if time.monotonic() >= self.next_prune:
                    self.next_prune = time.monotonic() + PRUNE_EVERY_S
                    await self._prune()
                batch, self.pending = self.pending[:MAX_GROUP], self.pending[MAX_GROUP:]
                await self._apply_group(batch)
        finally:
            self.draining = None

    async def _prune(self) -> None:
        try:
            async with self.runtime.pool.connection() as conn:
                pruned = await prune_deliveries(conn)
        except psycopg.Error as error:  # pruning can wait for the next time
            log.warning("clerk_deliveries_prune_failed", error=str(error))
            return
        if pruned:
            log.info("clerk_deliveries_pruned", deliveries=pruned)

    async def _apply_group(
        self, batch: list[tuple[str, UserChanged | UserDeleted, asyncio.Future[Outcome]]]
    ) -> None:
        budget = self.runtime.settings.default_monthly_token_budget
        try:
            async with self.runtime.pool.connection() as conn:
                try:
                    outcomes = await apply_changes(conn, [(s, c) for s, c, _ in batch], budget)
                except Exception as error:
                    if len(batch) == 1 or is_transient(error):
                        raise
                    # One event the database refuses must not fail the others:
                    # apply each on its own, so each fails or succeeds alone.
                    for svix_id, change, applied in batch:
                        try:
                            _settle(applied, await apply_change(conn, svix_id, change, budget))
                        except Exception as single_error:
                            _settle(applied, error=single_error)
                    return
        except Exception as error:
            for _, _, applied in batch:
                _settle(applied, error=error)
            return
        for (_, _, applied), outcome in zip(batch, outcomes, strict=True):
            _settle(applied, outcome)


def _settle(
    applied: asyncio.Future[Outcome],
    outcome: Outcome | None = None,
    error: BaseException | None = None,
) -> None:
    # A caller that gave up (its message was interrupted) has cancelled its future.
    if applied.done():
        return
    if error is not None:
        applied.set_exception(error)
    else:
        applied.set_result(outcome)  # type: ignore[arg-type]

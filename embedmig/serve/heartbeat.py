"""A searcher's heartbeat: which index it serves, written to SQL off the request path.

The request path only sets two attributes and bumps a counter; the searcher's background worker
(``embedmig.serve.mirror``) writes the row every ``readers.heartbeat_seconds``, and ``close()``
deletes it. ``embedmig.monitor.status`` reads the rows: ``embedmig status``, and ``prune``, which
keeps the files they name.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import sqlalchemy as sa

from embedmig.store import clock, readers


class Heartbeat:
    """One searcher's report of itself: set on the request path, sent by its worker."""

    def __init__(self, alias: str, every: float) -> None:
        self.every = every  # seconds; 0: no heartbeat
        self._id = uuid.uuid4().hex
        self._alias = alias
        self._started = clock.now()
        self._index: int | None = None
        self._since = self._started
        self._served = 0
        self._drift: str | None = None
        self._next = 0.0  # monotonic time of the next beat: the first is at once
        self._sent = False

    # ---- request path ------------------------------------------------------------------------

    def served(self, index_id: int, queries: int = 1) -> None:
        self.holds(index_id)
        self._served += queries

    def holds(self, index_id: int) -> None:
        """Its view holds ``index_id`` now: served, or followed off the request path."""
        if index_id != self._index:
            self._index, self._since = index_id, clock.now()
        self._drift = None

    def refused(self, why: str) -> None:
        """The searcher could not serve the live index (a drifted embedder, say): say why."""
        self._drift = why

    # ---- worker ------------------------------------------------------------------------------

    def due(self) -> float | None:
        """Seconds until the next beat is due (0: now); None without heartbeats."""
        if not self.every:
            return None
        return max(0.0, self._next - time.monotonic())

    def send(self, engine: sa.Engine) -> None:
        """Write the row now (the caller catches failures: a searcher serves on regardless)."""
        self._next = time.monotonic() + self.every
        beat = readers.Beat(
            id=self._id,
            alias=self._alias,
            host=socket.gethostname(),
            pid=os.getpid(),
            index_id=self._index,
            since=self._since if self._index is not None else None,
            served=self._served,
            drift=self._drift,
            started_at=self._started,
        )
        with engine.begin() as conn:
            readers.beat(conn, beat)
        self._sent = True

    def leave(self, engine: sa.Engine) -> None:
        """Delete the row: a reader that closed is not a reader gone silent."""
        if self._sent:
            with engine.begin() as conn:
                readers.leave(conn, self._id)
            self._sent = False

"""A searcher's traffic, off the request path: the query log and the canary's mirrored searches.

The request path only draws random numbers and offers an item to a bounded queue: it never waits
(a full queue drops the item and counts it) and never touches SQL or the shadow. One background
thread per searcher writes the log, embeds mirrored queries with the shadow's model, searches the
shadow and records both top-k lists, a batch per transaction. It also polls SQL for the alias's
open canary, so searchers in every process and host sharing the history database pick it up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from embedmig.environment import Environment
from embedmig.errors import EmbedmigError
from embedmig.serve.heartbeat import Heartbeat
from embedmig.serve.view import IndexView, follow
from embedmig.store import catalog, clock, manifest, traffic

log = logging.getLogger("embedmig")

_BATCH = 256  # items per transaction: one commit, one batched encode
# The worker sleeps this long after a first item before taking the queue: one wake-up, encode
# and commit per batch, not per query, so it seldom holds the GIL the request path wants.
_LINGER = 0.25
_WARN_EVERY = 60.0  # seconds between warnings about failed writes


@dataclass(frozen=True)
class Target:
    """The canary a searcher mirrors to, as its last poll saw it."""

    canary_id: int
    fraction: float
    k: int


@dataclass(frozen=True)
class _Item:
    at: datetime
    text: str
    k: int
    log: bool
    target: Target | None
    old_ids: np.ndarray
    old_scores: np.ndarray
    meta: str | None = None  # JSON


_STOP = object()


@dataclass
class TrafficStats:
    """What became of the queries a searcher offered to its log and canary."""

    logged: int = 0
    mirrored: int = 0
    dropped: int = 0  # never queued: the queue was full
    failed: int = 0  # queued, but its write or mirrored search failed
    polls: int = 0  # times the worker looked for a canary opened or closed on the alias


class Mirror:
    def __init__(self, env: Environment, alias: str) -> None:
        config = env.config
        self.env = env
        self.alias = alias
        self.log_share = config.get_share("searcher.log_queries")
        self.log_max = config.get_int("searcher.log_max")
        self.log_text = config.get_bool("searcher.log_text", True)
        self.poll_seconds = config.get_float("searcher.poll_seconds")
        self.heartbeat = Heartbeat(alias, config.get_range("readers.heartbeat_seconds", 0))
        # Set by the searcher: bring its view to the alias's live index, off the request path,
        # returning the index it then holds; called before each heartbeat.
        self.follow: Callable[[], int] | None = None
        self.stats = TrafficStats()
        self.target: Target | None = None  # set by the worker, read by the request path
        self._queue: queue.Queue[object] = queue.Queue(config.get_int("searcher.queue_size"))
        self._rng = random.Random()
        self._thread: threading.Thread | None = None
        self._shadow: IndexView | None = None
        self._drops: dict[int, int] = {}  # canary id -> mirrored queries dropped, not yet in SQL
        self._drops_lock = threading.Lock()
        self._idle = threading.Condition()  # notified when the worker finishes what was queued
        self._warned_at = -_WARN_EVERY

    # ---- request path ------------------------------------------------------------------------

    def plan(self) -> Target | None:
        """Whether the query about to be answered is mirrored: the canary, or None."""
        return self.plan_many(1)[0]

    def plan_many(self, queries: int) -> list[Target | None]:
        """``plan`` for each query of a batch."""
        self.start()
        target = self.target
        if target is None:
            return [None] * queries
        draws = [self._rng.random() for _ in range(queries)]
        return [target if draw < target.fraction else None for draw in draws]

    def served(
        self,
        text: str,
        k: int,
        target: Target | None,
        ids: np.ndarray,
        scores: np.ndarray,
        meta: str | None = None,
    ) -> None:
        """Offer an answered query to the log and, when ``target``, to the canary."""
        logged = self.log_share > 0 and self._rng.random() < self.log_share
        if not logged and target is None:
            return
        item = _Item(clock.now(), text, k, logged, target, ids, scores, meta)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.stats.dropped += 1
            if target is not None:
                with self._drops_lock:
                    self._drops[target.canary_id] = self._drops.get(target.canary_id, 0) + 1

    # ---- worker ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (once): at a searcher's first search, served or refused."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"embedmig-mirror-{self.alias}", daemon=True
        )
        self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is recorded (or failed); False on timeout."""
        if self._thread is None:
            return True
        with self._idle:
            return self._idle.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Record what is queued (waiting up to ``timeout`` seconds), then stop the worker."""
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        thread.join(timeout)
        self._thread = None
        try:
            self.heartbeat.leave(self.env.engine)
        except Exception as exc:  # its row goes silent instead, and prune forgets it
            self._warn(f"cannot remove the heartbeat of this reader of {self.alias}: {exc}")

    def _run(self) -> None:
        # The first poll waits a period too: a one-shot search (`embedmig search`) then ends
        # without loading a shadow it would never mirror to.
        next_poll = time.monotonic() + self.poll_seconds
        stopping = False
        while not stopping:
            wait = next_poll - time.monotonic()
            beat = self.heartbeat.due()
            if beat is not None:
                wait = min(wait, beat)
            try:
                first = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                first = None
            items: list[_Item] = []
            taken = self._drain(first)
            for item in taken:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Item):
                    items.append(item)
            self._write(items)
            with self._idle:
                for _ in taken:
                    self._queue.task_done()
                self._idle.notify_all()
            if not stopping and time.monotonic() >= next_poll:
                self._poll()
                self.stats.polls += 1
                next_poll = time.monotonic() + self.poll_seconds
            if not stopping and self.heartbeat.due() == 0:
                self._beat()

    def _beat(self) -> None:
        if self.follow is not None:
            # An idle reader follows a swap here, not at its next query: what it reports is
            # what it would serve now, and the index it let go of can be pruned.
            try:
                self.heartbeat.holds(self.follow())
            except EmbedmigError as exc:
                self.heartbeat.refused(str(exc))
            except Exception as exc:  # its next query meets the same failure and reports it
                self._warn(f"this reader of {self.alias} cannot follow its alias: {exc}")
        try:
            self.heartbeat.send(self.env.engine)
        except Exception as exc:  # a searcher serves on whether or not its row is written
            self._warn(f"cannot write the heartbeat of this reader of {self.alias}: {exc}")

    def _drain(self, first: object) -> list[object]:
        if first is None:
            return []
        if first is not _STOP:
            time.sleep(_LINGER)
        taken = [first]
        while len(taken) < _BATCH:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def _poll(self) -> None:
        """Follow the alias's canary: open its shadow when one opens, forget it when it closes."""
        try:
            with self.env.engine.connect() as conn:
                canary = traffic.open_canary(conn, self.alias)
                record = catalog.get_index(conn, canary.index_id) if canary else None
            if canary is None or record is None:
                self.target, self._shadow = None, None
                return
            # The model loads here, in the background, not on a mirrored query.
            self._shadow = follow(self.env, self._shadow, record)
            self.target = Target(canary.id, canary.fraction, canary.k)
        except Exception as exc:  # a searcher keeps serving whatever its canary's state
            self.target = None
            self._warn(f"cannot follow the canary of {self.alias}: {exc}")

    def _write(self, items: list[_Item]) -> None:
        target, shadow = self.target, self._shadow
        logged = [
            traffic.Served(
                i.at,
                manifest.content_hash(i.text),
                i.text if self.log_text else None,
                i.k,
                i.meta if self.log_text else None,
            )
            for i in items
            if i.log
        ]
        mirrored = [
            i
            for i in items
            if i.target is not None
            and target is not None
            and i.target.canary_id == target.canary_id
        ]
        with self._drops_lock:
            drops, self._drops = self._drops, {}
        if not logged and not mirrored and not drops:
            return
        try:
            compared = self._compare(mirrored, shadow, target) if mirrored else []
            with self.env.engine.begin() as conn:
                traffic.log(conn, self.alias, logged, self.log_max)
                if target is not None:
                    traffic.record(conn, target.canary_id, compared)
                for canary_id, count in drops.items():
                    traffic.add_dropped(conn, canary_id, count)
        except Exception as exc:  # never the searcher's failure: counted, and said now and then
            self.stats.failed += len(logged) + len(mirrored)
            self._warn(f"query log / canary write of {self.alias} failed: {exc}")
            return
        self.stats.logged += len(logged)
        self.stats.mirrored += len(compared)
        self.stats.failed += len(mirrored) - len(compared)

    def _compare(
        self, items: list[_Item], shadow: IndexView | None, target: Target | None
    ) -> list[traffic.Comparison]:
        """The shadow's answer to each mirrored query, beside the live answer the user got."""
        assert shadow is not None and target is not None
        k = target.k
        shadow.catch_up()
        if shadow.size < k:
            return []  # too few documents to compare top-k lists
        vectors = shadow.embedder.encode_queries([i.text for i in items])
        scores, ids = shadow.search(vectors, k)
        return [
            traffic.Comparison(
                item.at,
                item.text if self.log_text else None,
                item.old_ids[:k],
                item.old_scores[:k],
                ids[row],
                scores[row],
            )
            for row, item in enumerate(items)
            if len(item.old_ids) >= k
        ]

    def _warn(self, message: str) -> None:
        if time.monotonic() - self._warned_at >= _WARN_EVERY:
            self._warned_at = time.monotonic()
            log.warning("%s (the searcher goes on; %s)", message, self.stats)

"""The dual-writing writer: upserts and deletes that reach every index a reader may use.

A write is embedded, outside any lock, once per model of its target indexes (the live one, a
shadow being built, the holdover index after a swap); then, in one transaction that holds the
alias's sequence row, its changes and vectors are journaled, and put into the targets that are
pgvector tables. Commit is acknowledgement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

import numpy as np

from embedmig.config import Config
from embedmig.embedders import LoadedEmbedder
from embedmig.environment import Environment
from embedmig.errors import ConfigError, SourceError, StateError
from embedmig.names import blank, check_alias, check_key
from embedmig.store import catalog, docids, journal

# How often a write is re-embedded because a migration started between embedding and journaling.
_ATTEMPTS = 5

UpsertItem = tuple[str, str] | tuple[str, str, Mapping[str, Any] | None]


class _TargetsChanged(Exception):
    pass


class Writer:
    """Writes documents of one alias. Safe to use from many processes and hosts at once.

    Each call returns the sequence number of its last change once the change is durable. Calls in
    one process are ordered; across processes the journal's order is the commit order.
    """

    def __init__(self, env: Environment, alias: str) -> None:
        check_alias(alias)
        self.env = env
        self.alias = alias
        self.holdover = holdover(env.config)
        self._models: dict[tuple[str, int | None], LoadedEmbedder] = {}
        # Read now: a database that cannot be used fails here rather than at the first write.
        with env.engine.connect() as conn:
            self._targets = journal.targets(conn, alias, self.holdover)
            self._adapter = catalog.live_adapter(conn, alias)
            known = bool(self._targets) or journal.position(conn, alias) > 0
        # An alias with indexes needs no revision script: a pending script's syntax error must not
        # stop production writes. Only a brand-new alias is checked against the revisions.
        if not known and env.scripts.alias_head(alias) is None:
            raise ConfigError(f"no revision defines alias {alias!r}; see `embedmig heads`")

    def upsert(self, key: str, text: str, metadata: Mapping[str, Any] | None = None) -> int:
        return self.upsert_many([(key, text, metadata)])

    def upsert_many(self, docs: Iterable[UpsertItem]) -> int:
        """Insert or replace documents: ``(key, text)`` or ``(key, text, metadata)`` each."""
        changes = [_upsert(item) for item in docs]
        return self._write(changes)

    def delete(self, key: str) -> int:
        return self.delete_many([key])

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete documents by key; deleting a key that is not there is not an error."""
        changes = [journal.Change(journal.DELETE, check_key(key)) for key in keys]
        return self._write(changes)

    def close(self) -> None:
        self.env.dispose()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, changes: Sequence[journal.Change]) -> int:
        if not changes:
            with self.env.engine.connect() as conn:
                return journal.position(conn, self.alias)
        texts = [str(c.text) for c in changes if c.op == journal.UPSERT]
        for _ in range(_ATTEMPTS):
            # Embed for the targets the last write found (they change once per migration); the
            # transaction checks them again under the lock before anything is journaled.
            adapter = self._adapter
            vectors = self._embed(self._targets, adapter, texts)
            try:
                with self.env.engine.begin() as conn:
                    # First statement: see lock_alias. Reserves the ids and sequence numbers.
                    counters = docids.lock_alias(conn, self.alias, reserve=len(changes))
                    self._targets = journal.targets(conn, self.alias, self.holdover)
                    self._adapter = catalog.live_adapter(conn, self.alias)
                    if texts and (
                        any(target.id not in vectors for target in self._targets)
                        or _id(self._adapter) != _id(adapter)
                    ):
                        raise _TargetsChanged
                    kept = {target.id: vectors[target.id] for target in self._targets if texts}
                    last = journal.append(conn, self.alias, counters, changes, kept)
                    for target in self._targets:  # a store its readers read itself changes now
                        self.env.store(target.store).written(conn, target)
                    return last
            except _TargetsChanged:
                continue  # a migration started meanwhile: embed for its shadow too
        raise StateError(f"the indexes of alias {self.alias!r} kept changing; write not applied")

    def _embed(
        self,
        targets: Sequence[catalog.IndexRecord],
        adapter: catalog.AdapterRecord | None,
        texts: Sequence[str],
    ) -> dict[int, np.ndarray]:
        """Each target's vectors; the index an adapter serves gets the new model's through the
        map (the model its readers query with), not the old model's."""
        if not texts:
            return {}
        by_model: dict[tuple[str, int | None], np.ndarray] = {}
        vectors = {}
        for target in targets:
            through = adapter if adapter is not None and adapter.index_id == target.id else None
            key = (target.fingerprint, _id(through))
            if key not in by_model:
                model = self._models.get(key)
                if model is None:
                    model = self._models[key] = self.env.serving_embedder(target, through)
                by_model[key] = model.encode_documents(texts)
            vectors[target.id] = by_model[key]
        return vectors


def open_writer(config: Config, alias: str) -> Writer:
    """A writer on ``alias`` for pipelines: ``with open_writer(cfg, "docs") as w: w.upsert(k, t)``."""
    env = Environment(config)
    try:
        return Writer(env, alias)
    except BaseException:
        env.dispose()
        raise


def _id(adapter: catalog.AdapterRecord | None) -> int | None:
    return adapter.id if adapter is not None else None


def holdover(config: Config) -> timedelta | None:
    """How long writes keep reaching the index a swap replaced; None: until the next swap."""
    raw = config.require("writer.holdover")
    if raw.lower() == "next":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise ConfigError(
            f"option 'writer.holdover' must be 'next' or a number of seconds >= 0, got {raw!r}"
        )
    return timedelta(seconds=seconds)


def _upsert(item: object) -> journal.Change:
    if not isinstance(item, tuple) or len(item) not in (2, 3):
        raise SourceError(f"upsert_many() takes (key, text[, metadata]) tuples, got {item!r:.60}")
    key, text, *rest = item
    key = check_key(key)
    if not isinstance(text, str) or blank(text):
        raise SourceError(f"document {key!r} has no text; delete() it instead")
    metadata = rest[0] if rest else None
    if metadata is not None and not isinstance(metadata, Mapping):
        raise SourceError(f"metadata of document {key!r} must be a mapping")
    try:
        meta = journal.encode_meta(metadata)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"metadata of document {key!r} is not JSON: {exc}") from None
    return journal.Change(journal.UPSERT, key, text, meta)

"""Executors turn the backfill's chunks of texts into vectors; nothing else.

The driver (``migrate.backfill``) owns ids, the spool, checkpoints and the index build, whatever the
executor: ``inprocess`` encodes each chunk in this process; ``ray`` sends windows of chunks to an
actor pool on Ray Data (one model load per actor, on any machine of a Ray cluster) and hands the
vectors back in corpus order, so the same bookkeeping runs on the same vectors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from embedmig.config import Config, EmbedderSettings, EnvSettings
from embedmig.embedders import Embedder, LoadedEmbedder, Usage
from embedmig.errors import ConfigError, EmbedderError

log = logging.getLogger("embedmig")

EXECUTORS = ("inprocess", "ray")
Chunk = TypeVar("Chunk")


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray
    usage: Usage  # what these texts cost: requests, tokens, cache hits, truncated texts


class Executor(Protocol):
    def map(
        self, chunks: Iterable[Chunk], texts: Callable[[Chunk], list[str]]
    ) -> Iterator[tuple[Chunk, Encoded]]:
        """Each chunk with the document vectors of its texts, in the order of ``chunks``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InProcess:
    embedder: LoadedEmbedder

    def map(
        self, chunks: Iterable[Chunk], texts: Callable[[Chunk], list[str]]
    ) -> Iterator[tuple[Chunk, Encoded]]:
        for chunk in chunks:
            before = self.embedder.usage
            vectors = self.embedder.encode_documents(texts(chunk))
            yield chunk, Encoded(vectors, self.embedder.usage - before)

    def close(self) -> None:
        pass


def check(config: Config, executor: str | None = None) -> str:
    """The executor an upgrade uses (``executor`` overrides the option): a bad name, or Ray not
    installed, fails before anything is embedded."""
    name = executor or config.get("executor", "inprocess") or "inprocess"
    if name not in EXECUTORS:
        raise ConfigError(f"executor {name!r} is not one of {', '.join(EXECUTORS)}")
    if name == "ray":
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            raise ConfigError(
                'executor = ray needs Ray Data: pip install "embedmig[ray]"'
            ) from None
    return name


def open_executor(
    embedder: LoadedEmbedder, settings: EnvSettings, root: Path, ray: RaySettings | None
) -> Executor:
    """What turns the backfill's texts into vectors: Ray Data with ``ray`` settings, else this
    process. ``root`` is where relative model paths start, on every worker."""
    if ray is not None:
        return RayExecutor(embedder, settings, root, ray)
    return InProcess(embedder)


@dataclass(frozen=True)
class RaySettings:
    address: str | None  # None: a local ray.init()
    num_actors: int
    num_gpus_per_actor: float
    batch_size: int
    window: int  # documents per Ray Data dataset: one actor pool start per window

    @classmethod
    def of(cls, config: Config) -> RaySettings:
        gpus = config.get_float("ray.num_gpus_per_actor")
        if not 0 <= gpus <= 64:
            raise ConfigError(f"option 'ray.num_gpus_per_actor' must be from 0 to 64, got {gpus:g}")
        return cls(
            address=config.get("ray.address"),
            num_actors=config.get_int("ray.num_actors"),
            num_gpus_per_actor=gpus,
            batch_size=config.get_int("ray.batch_size"),
            window=config.get_int("ray.window"),
        )


class _Encoder:
    """One Ray actor: loads the embedder once (for an endpoint: one more concurrent client),
    encodes the batches Ray Data hands it. A batch's usage rides on its first row."""

    def __init__(
        self, spec_json: str, root: str, fingerprint: str, settings: EmbedderSettings
    ) -> None:
        from embedmig import embedders

        self.embedder = embedders.load(Embedder.from_json(spec_json), Path(root), settings)
        if self.embedder.fingerprint != fingerprint:
            # Another machine's copy of the model would put vectors in another space.
            raise EmbedderError(
                f"{self.embedder.describe()} on this Ray worker is not the driver's "
                "(fingerprints differ)"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch["text"]]
        before = self.embedder.usage
        vectors = self.embedder.encode_uncached(texts, "document")
        spent = self.embedder.usage - before
        out: dict[str, np.ndarray] = {"row": batch["row"], "vector": vectors}
        for name in _USAGE_COLUMNS:
            column = np.zeros(len(texts), dtype=np.int64)
            column[:1] = getattr(spent, name)
            out[name] = column
        return out


_USAGE_COLUMNS = ("requests", "tokens", "truncated", "estimated")


class RayExecutor:
    """Ray Data's ``map_batches`` over an actor pool of encoders, a window of chunks at a time.

    A window's vectors come back to the driver before the next window starts, and the driver
    checkpoints them chunk by chunk: a killed driver loses at most the window in flight.
    """

    def __init__(
        self, embedder: LoadedEmbedder, env: EnvSettings, root: Path, settings: RaySettings
    ) -> None:
        # Ray's own logs (and its C++ backend's) show with --verbose only: a failure is one line.
        quiet = log.getEffectiveLevel() > logging.DEBUG
        import ray
        import ray.data

        if quiet:
            for name in ("ray", "ray.data", "ray.serve"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        self.settings = settings
        self.embedder = embedder
        self.root = str(root)
        self.embedder_settings = env.embedder
        if not ray.is_initialized():
            ray.init(
                address=self.settings.address,
                include_dashboard=False,
                log_to_driver=not quiet,
                logging_level=logging.CRITICAL if quiet else logging.INFO,
            )
            self._started = True
        else:
            self._started = False
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False

    def map(
        self, chunks: Iterable[Chunk], texts: Callable[[Chunk], list[str]]
    ) -> Iterator[tuple[Chunk, Encoded]]:
        window: list[tuple[Chunk, list[str]]] = []
        size = 0
        for chunk in chunks:
            batch = texts(chunk)
            window.append((chunk, batch))
            size += len(batch)
            if size >= self.settings.window:
                yield from self._run(window)
                window, size = [], 0
        if window:
            yield from self._run(window)

    def _run(self, window: list[tuple[Chunk, list[str]]]) -> Iterator[tuple[Chunk, Encoded]]:
        """The window's texts the cache lacks go to the actors; the driver keeps the cache."""
        cache = self.embedder.cache
        found = [
            cache.lookup("document", batch) if cache else _nothing(batch, self.embedder.dim)
            for _, batch in window
        ]
        missing = [
            [text for text, hit in zip(batch, hits, strict=True) if not hit]
            for (_, batch), (_, hits) in zip(window, found, strict=True)
        ]
        rows = [text for texts in missing for text in texts]
        vectors, spent = self._encode(rows) if rows else (None, {})
        start = 0
        for (chunk, _), (cached, hits), texts in zip(window, found, missing, strict=True):
            stop = start + len(texts)
            if texts:
                assert vectors is not None
                fresh = vectors[start:stop]
                cached[~hits] = fresh
                if cache:
                    cache.store("document", texts, fresh)
            usage = Usage(
                texts=len(texts),
                cached=int(hits.sum()),
                **{
                    name: int(spent[name][start:stop].sum())
                    for name in spent
                    if name != "estimated"
                },
                estimated=bool(spent and spent["estimated"][start:stop].any()),
            )
            yield chunk, Encoded(cached, usage)
            start = stop

    def _encode(self, rows: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        import ray

        dataset = ray.data.from_items(
            [{"row": i, "text": text} for i, text in enumerate(rows)],
            # Enough blocks for every actor, each at most a few batches (Ray's default block
            # size would send a small window to a single actor).
            override_num_blocks=max(
                1, min(-(-len(rows) // self.settings.batch_size), 4 * self.settings.num_actors)
            ),
        )
        encoded = dataset.map_batches(
            _Encoder,
            fn_constructor_args=(
                self.embedder.spec_json,
                self.root,
                self.embedder.fingerprint,
                self.embedder_settings,
            ),
            batch_size=self.settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=self.settings.num_actors),
            num_gpus=self.settings.num_gpus_per_actor or None,
            batch_format="numpy",
        )
        vectors = np.empty((len(rows), self.embedder.dim), dtype=np.float32)
        spent = {name: np.zeros(len(rows), dtype=np.int64) for name in _USAGE_COLUMNS}
        try:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                vectors[batch["row"]] = np.stack(list(batch["vector"])).astype(np.float32)
                for name in _USAGE_COLUMNS:
                    spent[name][batch["row"]] = batch[name]
        except Exception as exc:  # a worker's failure reaches the driver as a Ray exception
            raise EmbedderError(f"a Ray worker failed to encode: {_first_line(exc)}") from exc
        return vectors, spent

    def close(self) -> None:
        import ray

        if self._started:
            ray.shutdown()


_RAISED = re.compile(r"^([\w.]+(?:Error|Exception)): (.+)$")


def _first_line(exc: BaseException) -> str:
    """The worker's own error, not Ray's wrapping of it: Ray carries the worker's traceback as
    text, whose last ``module.Error: message`` line is what the worker raised."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    found = [
        m for text in texts for line in text.splitlines() if (m := _RAISED.match(line.strip()))
    ]
    ours = [m for m in found if m.group(1).startswith("embedmig.")]
    if ours:
        return ours[-1].group(2)
    if found:
        return f"{found[-1].group(1).rpartition('.')[2]}: {found[-1].group(2)}"
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _nothing(texts: list[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((len(texts), dim), dtype=np.float32), np.zeros(len(texts), dtype=bool)

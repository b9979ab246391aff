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
from typing import Any, Protocol, TypeVar

import numpy as np

from embedmig.config import Config, EnvSettings
from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.errors import ConfigError, EmbedderError

log = logging.getLogger("embedmig")

EXECUTORS = ("inprocess", "ray")
Chunk = TypeVar("Chunk")


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray
    truncated: int  # texts longer than the model's token limit (the model cut them)


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
    batch_size: int

    def map(
        self, chunks: Iterable[Chunk], texts: Callable[[Chunk], list[str]]
    ) -> Iterator[tuple[Chunk, Encoded]]:
        for chunk in chunks:
            batch = texts(chunk)
            truncated = int(count_truncated(self.embedder, batch, self.batch_size).sum())
            yield chunk, Encoded(self.embedder.encode_documents(batch, self.batch_size), truncated)

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
    return InProcess(embedder, settings.batch_size)


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
    """One Ray actor: loads the model once, encodes the batches Ray Data hands it."""

    def __init__(
        self, spec_json: str, root: str, fingerprint: str, options: dict[str, Any]
    ) -> None:
        from embedmig import embedders

        self.embedder = embedders.load(Embedder.from_json(spec_json), Path(root), **options)
        if self.embedder.fingerprint != fingerprint:
            # Another machine's copy of the model would put vectors in another space.
            raise EmbedderError(
                f"the model files of {self.embedder.spec.model} on this Ray worker differ from "
                "the driver's (fingerprints differ)"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch["text"]]
        vectors = self.embedder.encode_documents(texts, len(texts))
        truncated = count_truncated(self.embedder, texts, len(texts))
        return {"row": batch["row"], "vector": vectors, "truncated": truncated}


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
        self.options = {"allow_remote_code": env.allow_remote_code, "device": env.device}
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
        import ray

        rows = [text for _, batch in window for text in batch]
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
                self.options,
            ),
            batch_size=self.settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=self.settings.num_actors),
            num_gpus=self.settings.num_gpus_per_actor or None,
            batch_format="numpy",
        )
        vectors = np.empty((len(rows), self.embedder.dim), dtype=np.float32)
        truncated = np.zeros(len(rows), dtype=bool)
        try:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                vectors[batch["row"]] = np.stack(list(batch["vector"])).astype(np.float32)
                truncated[batch["row"]] = batch["truncated"]
        except Exception as exc:  # a worker's failure reaches the driver as a Ray exception
            raise EmbedderError(f"a Ray worker failed to encode: {_first_line(exc)}") from exc
        start = 0
        for chunk, batch in window:
            stop = start + len(batch)
            yield chunk, Encoded(vectors[start:stop], int(truncated[start:stop].sum()))
            start = stop

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


def count_truncated(embedder: LoadedEmbedder, texts: list[str], step: int) -> np.ndarray:
    """Which texts exceed the model's token limit (the model truncates them silently).

    Counted where the texts are encoded: under Ray, tokenizing every document on the driver would
    cap the whole cluster at one core's tokenizer speed.
    """
    flags = np.zeros(len(texts), dtype=bool)
    limit = embedder.max_seq_length
    tokenizer = getattr(embedder.model, "tokenizer", None)
    if limit is None or tokenizer is None or not callable(tokenizer):
        return flags
    # In slices, so the token lists of a whole chunk never sit in memory at once.
    for start in range(0, len(texts), step):
        try:
            encoded = tokenizer(texts[start : start + step], truncation=False)["input_ids"]
        except Exception:  # static and custom tokenizers differ; counting is a courtesy, not a must
            return np.zeros(len(texts), dtype=bool)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flags[start : start + len(encoded)] = lengths > limit
    return flags

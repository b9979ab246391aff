"""Configuration: ``embedmig.ini`` (section ``[embedmig]``) or ``[tool.embedmig]`` in pyproject.toml.

Relative paths in the configuration are resolved against the folder of the file that holds it, as
alembic does for ``script_location``, so commands work from any working directory.
"""

from __future__ import annotations

import configparser
import copy
import difflib
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embedmig.errors import ConfigError

SECTION = "embedmig"
# The deepest search a reader may ask for: FAISS allocates k result slots per query up front.
MAX_K = 10_000
# Integer options whose size becomes memory: bounded, so a typo is an error, not an OOM kill.
BOUNDS: Mapping[str, tuple[int, int | None]] = {
    "batch_size": (1, 65_536),
    "checkpoint_every": (1, 10_000_000),
    "eval.sample": (1, 1_000_000),
    "eval.k": (1, MAX_K),  # FAISS allocates k results per query
    "eval.seed": (0, 2**32 - 1),
    "eval.resamples": (1, 100_000),
    "eval.pair_docs": (2, 5_000),  # pair_docs² cosines are held at once
    "eval.forecast_resamples": (1, 10_000),
    "eval.segment_min": (2, 1_000_000),
    "searcher.log_max": (1, 100_000_000),
    "searcher.queue_size": (1, 1_000_000),  # queued queries wait in the searcher's memory
    "searcher.threads": (0, 1024),
    "canary.min_queries": (1, 100_000_000),
    "watch.sample": (1, 1_000_000),  # queries embedded and searched by a watch
    "watch.min_queries": (1, 1_000_000),
    "ray.num_actors": (1, 10_000),
    "ray.batch_size": (1, 65_536),
    "ray.window": (1, 10_000_000),
    "embedder.concurrency": (1, 256),  # requests in flight, each a thread and a connection
    "embedder.max_batch_tokens": (1, 100_000_000),
    "cache.max_mb": (0, None),  # a window's texts and vectors are held by the driver
    "adapter.pairs": (2, 1_000_000),  # both models' vectors of every pair are held at once
}
log = logging.getLogger("embedmig")

DEFAULTS: Mapping[str, str] = {
    "script_location": "migrations",
    "sqlalchemy.url": "sqlite:///embedmig.db",
    "index_dir": "indexes",
    "index_store": "faiss",
    "pgvector.view_schema": "search",
    "pgvector.lock_timeout_ms": "100",
    "pgvector.lock_attempts": "20",
    "pgvector.build_memory_mb": "1024",
    "batch_size": "32",
    "checkpoint_every": "1024",
    "eval.sample": "500",
    "eval.k": "10",
    "eval.seed": "0",
    "eval.rbo_p": "0.9",
    "eval.resamples": "1000",
    "eval.pair_docs": "200",
    "eval.forecast_resamples": "100",
    "eval.segment_min": "20",
    "eval.segment_drop": "0.1",
    "lock.lease_seconds": "60",
    "writer.holdover": "next",
    "searcher.log_queries": "0",
    "searcher.log_max": "100000",
    "searcher.log_text": "true",
    "searcher.queue_size": "1024",
    "searcher.threads": "0",
    "searcher.refresh_ms": "100",
    "searcher.poll_seconds": "2",
    "readers.heartbeat_seconds": "10",
    "readers.silent_seconds": "60",
    "readers.skew_seconds": "60",
    "watch.sample": "2000",
    "watch.min_queries": "20",
    "canary.fraction": "0.1",
    "canary.min_queries": "100",
    "executor": "inprocess",
    "ray.num_actors": "2",
    "ray.num_gpus_per_actor": "0",
    "ray.batch_size": "256",
    "ray.window": "65536",
    "embedder.concurrency": "4",
    "embedder.timeout": "60",
    "embedder.retry_seconds": "120",
    "embedder.max_batch_tokens": "100000",
    "probe.min_cosine": "0.999",
    "cache": "true",
    "cache.dir": "embedding-cache",
    "cache.max_mb": "4096",
    "adapter.pairs": "5000",
    "corpus.id_field": "id",
    "corpus.text_field": "text",
    "queries.id_field": "_id",
    "queries.text_field": "text",
}


# Options read with no default; any other key (outside the ``env.`` namespace, free for env.py) is
# likely a typo, and a typo silently ignored is an option silently at its default.
OPTIONAL = frozenset(
    (
        "corpus",
        "corpus.title_field",
        "contracts",
        "eval.segment_by",
        "queries",
        "qrels",
        "device",
        "allow_remote_code",
        "ray.address",
        "embedder.price_per_million_tokens",
    )
)
KNOWN = frozenset(DEFAULTS) | OPTIONAL


def unknown_options(options: Mapping[str, str]) -> list[str]:
    """One warning per unknown option, with the closest valid name."""
    warnings = []
    for key in sorted(options):
        if key in KNOWN or key.startswith("env."):
            continue
        close = difflib.get_close_matches(key, sorted(KNOWN), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.append(f"unknown option {key!r} ignored{hint} (options for env.py go under env.)")
    return warnings


class Config:
    """Options of one embedmig project.

    ``Config("embedmig.ini")`` or ``Config("pyproject.toml")`` read a file; ``options`` override or
    replace it (``Config(options={...}, root=...)`` needs no file at all, handy in pipelines).
    """

    def __init__(
        self,
        path: str | Path | None = "embedmig.ini",
        *,
        options: Mapping[str, object] | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.path = Path(path).resolve() if path is not None else None
        file_options = _read(self.path) if self.path is not None else {}
        for warning in unknown_options(file_options):
            log.warning("%s: %s", self.path, warning)
        merged = {**DEFAULTS, **file_options}
        merged.update({k: str(v) for k, v in (options or {}).items()})
        self.options: dict[str, str] = merged
        if root is not None:
            self.root = Path(root).resolve()
        elif self.path is not None:
            self.root = self.path.parent
        else:
            self.root = Path.cwd()

    def with_options(self, **options: object) -> Config:
        """A copy of this configuration with ``options`` set (``with_options(executor="ray")``)."""
        changed = copy.copy(self)
        changed.options = {**self.options, **{k: str(v) for k, v in options.items()}}
        return changed

    @classmethod
    def find(cls, start: str | Path | None = None) -> Config:
        """The configuration in ``start`` (default: the working directory)."""
        folder = Path(start or Path.cwd())
        ini = folder / "embedmig.ini"
        if ini.exists():
            return cls(ini)
        pyproject = folder / "pyproject.toml"
        if pyproject.exists() and _pyproject_section(pyproject) is not None:
            return cls(pyproject)
        raise ConfigError(
            f"no embedmig.ini or [tool.embedmig] in pyproject.toml in {folder}; "
            "run `embedmig init DIR` first or pass --config"
        )

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.options.get(key)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            where = self.path or "the options"
            raise ConfigError(f"option {key!r} is not set in {where}")
        return value

    def get_int(self, key: str) -> int:
        """An integer option, within its ``BOUNDS`` (at least 1 for any other)."""
        raw = self.require(key)
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"option {key!r} must be an integer, got {raw!r}") from None
        minimum, maximum = BOUNDS.get(key, (1, None))
        if value < minimum:
            raise ConfigError(f"option {key!r} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"option {key!r} must be at most {maximum:,}, got {value:,}")
        return value

    def get_float(self, key: str) -> float:
        raw = self.require(key)
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"option {key!r} must be a number, got {raw!r}") from None

    def get_range(self, key: str, low: float, high: float = math.inf) -> float:
        """A finite float option from ``low`` to ``high``."""
        value = self.get_float(key)
        if not math.isfinite(value) or not low <= value <= high:
            upper = f" to {high:g}" if math.isfinite(high) else " or more"
            raise ConfigError(f"option {key!r} must be a number from {low:g}{upper}, got {value:g}")
        return value

    def get_share(self, key: str) -> float:
        """A float option from 0 to 1 (a fraction of queries, say)."""
        return share(self.get_float(key), f"option {key!r}")

    def get_bool(self, key: str, default: bool = False) -> bool:
        raw = self.get(key)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option {key!r} must be true or false, got {raw!r}")

    def path_option(self, key: str) -> Path | None:
        value = self.get(key)
        return self.resolve(value) if value is not None else None

    def resolve(self, value: str | Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def script_location(self) -> Path:
        return self.resolve(self.require("script_location"))

    @property
    def index_dir(self) -> Path:
        return self.resolve(self.require("index_dir"))

    @property
    def url(self) -> str:
        """The history database's URL, its ``${VAR}`` references read from the environment: the
        password need not live in a committed file."""
        url = _from_environment(self.require("sqlalchemy.url"), "sqlalchemy.url")
        # A relative SQLite file belongs next to the config file, not to the working directory.
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and not rest.startswith((":memory:", "file:")):  # file: is a SQLite URI
                return prefix + str(self.resolve(rest))
        return url

    def __repr__(self) -> str:
        return f"Config({str(self.path) if self.path else None!r}, root={str(self.root)!r})"


_ENVIRONMENT_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _from_environment(value: str, option: str) -> str:
    """``value`` with each ``${VAR}`` replaced by that environment variable, as is; an unset one
    is a ConfigError naming it (never a value)."""

    def expand(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"option {option!r} reads ${{{name}}} from the environment, and {name} is not set"
            )
        return os.environ[name]

    return _ENVIRONMENT_REFERENCE.sub(expand, value)


DEFAULT_SAMPLE = 1000
_SAMPLE_RULE = (
    "a number of documents (1 or more) or a share of the corpus like 10% (above 0%, at most 100%)"
)


def sample_size(value: object) -> int | float:
    """A dry run's sample: an int count of documents, or a float share of the corpus in (0, 1]
    (``"10%"`` from the command line). One rule, one message, whatever the spelling."""
    given = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else int(text)
        except ValueError:
            value = None
    if isinstance(value, float) and 0 < value <= 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"--sample must be {_SAMPLE_RULE}, got {given!r}")


def share(value: object, name: str) -> float:
    """``value`` as a share from 0 to 1; ``name`` says where it came from in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise ConfigError(f"{name} must be a share from 0 to 1, got {shown}")
    return float(value)


@dataclass(frozen=True)
class EmbedderSettings:
    """How embedders run here (not what they are): batch size, device, and an endpoint's
    concurrency, timeout, retry budget and batch token budget. Picklable, for Ray's actors."""

    batch_size: int
    device: str | None
    allow_remote_code: bool
    concurrency: int
    timeout: float
    retry_seconds: float
    max_batch_tokens: int

    @classmethod
    def of(cls, config: Config) -> EmbedderSettings:
        return cls(
            batch_size=config.get_int("batch_size"),
            device=config.get("device"),
            allow_remote_code=config.get_bool("allow_remote_code"),
            concurrency=config.get_int("embedder.concurrency"),
            timeout=config.get_range("embedder.timeout", 0.001),
            retry_seconds=config.get_range("embedder.retry_seconds", 0),
            max_batch_tokens=config.get_int("embedder.max_batch_tokens"),
        )


@dataclass(frozen=True)
class EnvSettings:
    """What every command that embeds reads, migrating or serving; built once per environment
    (``Environment.settings``), which checks them."""

    embedder: EmbedderSettings
    lock_lease: float
    probe_min_cosine: float
    cache_dir: Path | None  # None: no embedding cache
    cache_max_bytes: int
    price_per_million_tokens: float | None

    @property
    def batch_size(self) -> int:
        return self.embedder.batch_size

    @classmethod
    def of(cls, config: Config) -> EnvSettings:
        price = config.get("embedder.price_per_million_tokens")
        return cls(
            embedder=EmbedderSettings.of(config),
            lock_lease=config.get_float("lock.lease_seconds"),
            probe_min_cosine=config.get_range("probe.min_cosine", -1.0, 1.0),
            cache_dir=config.path_option("cache.dir") if config.get_bool("cache", True) else None,
            cache_max_bytes=config.get_int("cache.max_mb") * 2**20,
            price_per_million_tokens=(
                None if price is None else config.get_range("embedder.price_per_million_tokens", 0)
            ),
        )


def _read(path: Path) -> dict[str, str]:
    if path.name == "pyproject.toml":
        section = _pyproject_section(path)
        if section is None:
            raise ConfigError(f"{path} has no [tool.embedmig] table")
        return section
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(_text(path), source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"{path} has no [{SECTION}] section")
    return dict(parser.items(SECTION))


def _text(path: Path) -> str:
    """A configuration file's text: UTF-8, with or without a byte-order mark (as editors on
    Windows write it); a file that is not readable text says why, naming the line."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"cannot parse {path}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None


def _pyproject_section(path: Path) -> dict[str, str] | None:
    try:
        data = tomllib.loads(_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    table = data.get("tool", {}).get(SECTION)
    if table is None:
        return None
    return {k: str(v) for k, v in _flatten(table).items()}


def _flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """``[tool.embedmig.corpus] id_field = "x"`` becomes ``corpus.id_field``, as in the ini form."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

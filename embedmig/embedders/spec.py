"""What a revision declares: ``Embedder(...)``, checked when it is built, stored as JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from embedmig.errors import EmbedderError

LOCAL = "sentence-transformers"
OPENAI = "openai"
PYTHON = "python"
BACKENDS = (LOCAL, OPENAI, PYTHON)
# The kinds of map an adapter revision can fit (embedmig.migrate.fit), named here for the CLI.
MAP_KINDS = ("procrustes", "affine", "mlp")

OPENAI_URL = "https://api.openai.com/v1"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# Only the sentence-transformers backend loads files: these mean nothing to the others.
_LOCAL_ONLY = ("max_seq_length", "truncate_dim", "revision", "trust_remote_code")
# Fields added with the remote backends: left out of a local embedder's options at their defaults,
# so the fingerprints of indexes built before them do not change.
_LATER = ("backend", "base_url", "api_key_env", "dimensions", "params")


@dataclass(frozen=True)
class Embedder:
    """A model plus every option that changes its vectors.

    ``backend`` says how it is reached:

    - ``"sentence-transformers"`` (the default): ``model`` is a hub name (resolved from the local
      cache only: embedmig never downloads) or a folder, absolute or relative to the configuration.
    - ``"openai"``: ``model`` is the model name of an OpenAI-compatible ``/v1/embeddings``
      endpoint at ``base_url`` (OpenAI's own when None); the API key is read at call time from the
      environment variable ``api_key_env`` (``OPENAI_API_KEY`` for OpenAI's own endpoint) and is
      never stored. ``dimensions`` asks the endpoint for shortened vectors.
    - ``"python"``: ``model`` is ``"package.module:factory"``; ``factory(**params)`` returns an
      object with ``encode_documents``, ``encode_queries`` and ``dimension`` (see
      :class:`embedmig.embedders.Encoder`).

    Prompts are prefixed to the texts for the ``openai`` and ``python`` backends, and handed to
    sentence-transformers as its prompts for local models.

    ``price_per_million_tokens`` prices what it embeds in reports and dry-run forecasts (for an
    ``openai`` embedder without one, the ``embedder.price_per_million_tokens`` option); it is
    not part of the fingerprint.
    """

    model: str
    normalize: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    max_seq_length: int | None = None
    truncate_dim: int | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    backend: str = LOCAL
    base_url: str | None = None
    api_key_env: str | None = None
    dimensions: int | None = None
    params: Mapping[str, Any] | None = None
    # What it costs, in the report's currency; changes no vector (not in the fingerprint).
    price_per_million_tokens: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise EmbedderError("Embedder needs a model name or path")
        if self.backend not in BACKENDS:
            raise EmbedderError(
                f"Embedder backend must be one of {', '.join(map(repr, BACKENDS))}, "
                f"got {self.backend!r}"
            )
        for name in ("max_seq_length", "truncate_dim", "dimensions"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise EmbedderError(f"Embedder {name} must be a positive integer, got {value!r}")
        for name in ("query_prompt", "document_prompt", "revision", "base_url", "api_key_env"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise EmbedderError(f"Embedder {name} must be a string or None, got {value!r}")
        price = self.price_per_million_tokens
        if price is not None and (
            isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price < 1e9
        ):
            raise EmbedderError(
                f"Embedder price_per_million_tokens must be a number of 0 or more, got {price!r}"
            )
        for name in ("normalize", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise EmbedderError(f"Embedder {name} must be True or False")
        if self.backend == LOCAL:
            self._refuse(("base_url", "api_key_env", "dimensions", "params"), "truncate_dim")
        elif self.backend == OPENAI:
            self._refuse((*_LOCAL_ONLY, "params"), "dimensions")
            self._check_endpoint()
        else:
            self._refuse((*_LOCAL_ONLY, "base_url", "api_key_env", "dimensions"), "params")
            if not _IMPORT_PATH.match(self.model):
                raise EmbedderError(
                    f"backend='python' needs model='package.module:factory', got {self.model!r}"
                )
            self._check_params()

    def _refuse(self, names: tuple[str, ...], instead: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value is not False:
                raise EmbedderError(
                    f"Embedder option {name} does not apply to backend={self.backend!r} "
                    f"(see {instead})"
                )

    def _check_endpoint(self) -> None:
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise EmbedderError(
                    f"Embedder base_url must be an http(s) URL like https://host/v1, "
                    f"got {redact(self.base_url)!r}"
                )
            if parts.username or parts.password or parts.query or parts.fragment:
                # The spec is recorded in history: a key in the URL would be written there (and
                # "/embeddings" is appended to the path, so a query string has no place anyway).
                raise EmbedderError(
                    "Embedder base_url must not carry credentials, a query string or a fragment "
                    "(a key there would be stored in history): name the environment variable "
                    "holding the key in api_key_env"
                )
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise EmbedderError(
                "Embedder api_key_env names an environment variable (letters, digits, _), "
                "not the key itself"
            )

    def _check_params(self) -> None:
        if self.params is None:
            return
        if not isinstance(self.params, Mapping) or not all(isinstance(k, str) for k in self.params):
            raise EmbedderError("Embedder params must be a dict with string keys")
        try:
            json.dumps(dict(self.params), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise EmbedderError(f"Embedder params must be JSON values: {exc}") from None

    @property
    def key_env(self) -> str | None:
        """The environment variable the API key is read from (None: no key is sent)."""
        if self.api_key_env is None and self.backend == OPENAI and self.base_url is None:
            return "OPENAI_API_KEY"
        return self.api_key_env

    @property
    def endpoint(self) -> str:
        """The embeddings URL of an ``openai`` embedder (without credentials or query)."""
        return (self.base_url or OPENAI_URL).rstrip("/") + "/embeddings"

    def options(self) -> dict[str, Any]:
        """The vector-changing options, without the model."""
        opts = asdict(self)
        del opts["model"], opts["price_per_million_tokens"]
        for name in _LATER:
            if opts[name] == _FIELD_DEFAULTS[name]:
                del opts[name]
        if "params" in opts:
            opts["params"] = dict(self.params or {})
        return opts

    def price(self, default: float | None) -> float | None:
        """What a million of its input tokens cost: its own price, else ``default`` (the
        project's option) for an endpoint; a local model or user code costs nothing by default."""
        if self.price_per_million_tokens is not None:
            return float(self.price_per_million_tokens)
        return default if self.backend == OPENAI else None

    def to_json(self) -> str:
        data = asdict(self)
        if data["params"] is not None:
            data["params"] = dict(data["params"])
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Embedder:
        return cls(**json.loads(text))

    def describe(self) -> str:
        """The model and its non-default options; an endpoint without credentials or query."""
        extras = ", ".join(
            f"{k}={redact(v) if k == 'base_url' else v!r}"
            for k, v in self.options().items()
            if k != "backend" and v != _FIELD_DEFAULTS[k]
        )
        prefix = "" if self.backend == LOCAL else f"{self.backend}:"
        return f"{prefix}{self.model}" + (f" ({extras})" if extras else "")

    def source(self) -> str:
        """This embedder as Python source, for a revision script: the non-default options only."""
        options = "".join(
            f", {name}={value!r}"
            for name, value in asdict(self).items()
            if name != "model" and value != _FIELD_DEFAULTS[name]
        )
        return f"Embedder({self.model!r}{options})"

    def __hash__(self) -> int:
        return hash(self.to_json())


_FIELD_DEFAULTS = {f.name: f.default for f in fields(Embedder)}


def redact(url: str) -> str:
    """A URL as it may be printed: no user, password or query string (where keys hide)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"

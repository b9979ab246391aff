"""The ``openai`` backend: any OpenAI-compatible ``/v1/embeddings`` endpoint, over httpx.

Batches are bounded by a number of texts and by an estimate of their input tokens; up to
``embedder.concurrency`` requests are in flight. 429, 5xx, timeouts, dropped connections and
bodies that are not JSON are retried with exponential backoff and jitter (tenacity), honouring
Retry-After, within ``embedder.retry_seconds`` in all; then one line names the endpoint and what
it answered. An answer is checked before anything is kept: one vector per text, ``index`` a
permutation of the inputs, one dimension, numbers only. The API key is read from its environment
variable for each request and appears in no message.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from embedmig.config import EmbedderSettings
from embedmig.embedders.base import Meter, estimate_tokens, identity, prefixed
from embedmig.embedders.spec import Embedder, redact
from embedmig.errors import EmbedderError

if TYPE_CHECKING:
    import httpx
    import numpy as np

# What a streamed encode hands over per answered request: its texts and their vectors.
Answered = Callable[[list[str], "np.ndarray"], None]

_RETRIED_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# A text to learn the dimension from when the revision does not declare it.
_DIMENSION_TEXT = "dimension"


class _Retry(Exception):
    """A failure worth another attempt: ``why`` in a few words, ``retry_after`` in seconds."""

    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


class OpenAIBackend:
    """An OpenAI-compatible endpoint (OpenAI, text-embeddings-inference, vLLM, Ollama, infinity)."""

    def __init__(self, spec: Embedder, settings: EmbedderSettings) -> None:
        try:
            import httpx
            import tenacity  # noqa: F401
        except ImportError:
            raise EmbedderError(
                'backend="openai" needs httpx and tenacity: pip install "embedmig[http]"'
            ) from None
        self.spec = spec
        self.settings = settings
        self.endpoint = spec.endpoint
        self.meter = Meter()
        self._dim = spec.dimensions
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(
                max_connections=settings.concurrency,
                max_keepalive_connections=settings.concurrency,
            ),
        )
        self._pool: ThreadPoolExecutor | None = None

    @property
    def where(self) -> str:
        return redact(self.endpoint)

    @property
    def dimension(self) -> int:
        if self._dim is None:
            self._dim = len(self._request([_DIMENSION_TEXT])[0])
        return self._dim

    def fingerprint(self) -> str:
        # Where it is served is left out: the same model behind another URL is the same space,
        # and the probes catch a server that says so wrongly.
        return identity(self.spec, self.dimension)

    def describe(self) -> str:
        return self.spec.describe()

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self.encode_streamed(texts, "document")

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encode_streamed(texts, "query")

    def encode_streamed(
        self, texts: list[str], kind: str, answered: Answered | None = None
    ) -> np.ndarray:
        """``texts`` embedded in requests; each request's vectors are handed to ``answered``
        (with its texts, unprefixed) as soon as it is validated, so a later request that fails
        for good loses none of what was paid for."""
        import numpy as np

        prompt = self.spec.query_prompt if kind == "query" else self.spec.document_prompt
        # Longest first, as sentence-transformers orders a batch: texts of a length share a
        # request, and a server that pads a request to its longest text pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = list(self._batches([texts[i] for i in order]))

        def request(batch: list[str]) -> np.ndarray:
            vectors = self._request(prefixed(prompt, batch))
            if answered is not None:
                answered(batch, vectors)
            return vectors

        if len(batches) == 1 or self.settings.concurrency == 1:
            parts = [request(batch) for batch in batches]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.settings.concurrency, thread_name_prefix="embedmig-http"
                )
            parts = list(self._pool.map(request, batches))
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        return vectors

    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        """Consecutive batches of at most ``batch_size`` texts and ``max_batch_tokens`` estimated
        tokens (a longer text goes alone: the endpoint says whether it takes it)."""
        batch: list[str] = []
        tokens = 0
        for text in texts:
            cost = estimate_tokens(text)
            if batch and (
                len(batch) >= self.settings.batch_size
                or tokens + cost > self.settings.max_batch_tokens
            ):
                yield batch
                batch, tokens = [], 0
            batch.append(text)
            tokens += cost
        if batch:
            yield batch

    def _request(self, texts: list[str]) -> np.ndarray:
        """One request's vectors, retried. Bounded by wall time: each attempt by
        ``embedder.timeout`` however its answer trickles in, and all of them together by
        ``max(embedder.timeout, embedder.retry_seconds)``."""
        import tenacity

        started = time.monotonic()
        budget = started + max(self.settings.timeout, self.settings.retry_seconds)
        attempts = 0

        def attempt() -> np.ndarray:
            nonlocal attempts
            attempts += 1
            return self._post(texts, min(time.monotonic() + self.settings.timeout, budget))

        try:
            return tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_Retry),
                wait=_wait,
                stop=tenacity.stop_before_delay(self.settings.retry_seconds),
                reraise=True,
            )(attempt)
        except _Retry as exc:
            raise EmbedderError(
                f"{self.where} failed {attempts} time(s) in "
                f"{time.monotonic() - started:.0f} s: {exc.why}"
            ) from None

    def _post(self, texts: list[str], deadline: float) -> np.ndarray:
        import httpx

        body: dict[str, Any] = {"model": self.spec.model, "input": texts}
        body["encoding_format"] = "float"
        if self.spec.dimensions is not None:
            body["dimensions"] = self.spec.dimensions
        late = _Retry(f"no answer within {self.settings.timeout:g} s (timeout)")
        headers = self._headers()
        try:
            with self._client.stream(
                "POST",
                self.endpoint,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(max(0.001, deadline - time.monotonic())),
            ) as response:
                self.meter.add(requests=1)
                _read_by(response, deadline)
            if response.status_code in _RETRIED_STATUS:
                after = _retry_after(response)
                later = f" (Retry-After {after:g} s)" if after is not None else ""
                raise _Retry(f"answered {_status(response)}{later}", after)
            if response.status_code != 200:
                raise EmbedderError(f"{self.where} answered {self._refusal(response)}")
            payload = response.json()
        except httpx.TimeoutException:
            raise late from None
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:  # cut off by _read_by's watchdog
                raise late from None
            raise _Retry(f"connection failed ({exc.__class__.__name__})") from None
        except ValueError:  # the body is not JSON: a proxy or a dropped stream cut it
            raise _Retry(f"answered {_status(response)} with a body that is not JSON") from None
        return self._vectors(payload, texts)

    def _headers(self) -> dict[str, str]:
        name = self.spec.key_env
        if name is None:
            return {}
        key = os.environ.get(name, "")
        if not key.strip():
            raise EmbedderError(
                f"the API key of {self.describe()} is read from the environment variable {name}, "
                "which is not set"
            )
        key = key.strip()
        if not (key.isascii() and key.isprintable() and " " not in key):
            # httpx would fail encoding it (an internal error) or send a broken header that
            # looks like a network fault and is retried for the whole budget.
            raise EmbedderError(
                f"the API key in the environment variable {name} (for {self.describe()}) has "
                "characters an HTTP header cannot carry (non-ASCII, a space or a line break): "
                "check how it was set"
            )
        return {"Authorization": f"Bearer {key}"}

    def _refusal(self, response: httpx.Response) -> str:
        """A status the endpoint will not change its mind about, with its own message (scrubbed
        of the key: some APIs quote the key they refused)."""
        status = _status(response)
        if response.status_code in (401, 403):
            return f"{status}: check the key in {self.spec.key_env or 'api_key_env'}"
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = response.text
        key = os.environ.get(self.spec.key_env or "", "").strip()
        if key:
            message = message.replace(key, "***")
        message = " ".join(message.split())[:200]
        return f"{status}: {message}" if message else status

    def _vectors(self, payload: Any, texts: list[str]) -> np.ndarray:
        import numpy as np

        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise EmbedderError(f"{self.where} answered without a list of embeddings in 'data'")
        if len(data) != len(texts):
            raise EmbedderError(
                f"{self.where} returned {len(data)} embedding(s) for {len(texts)} text(s)"
            )
        order = [item.get("index") for item in data]
        integers = all(isinstance(i, int) and not isinstance(i, bool) for i in order)
        if not integers or sorted(order) != list(range(len(texts))):
            raise EmbedderError(
                f"{self.where} returned 'index' values that are not 0 to {len(texts) - 1} once each"
            )
        rows: list[Any] = [None] * len(texts)
        for item in data:  # the answer may come in any order: 'index' says whose each is
            rows[item["index"]] = item.get("embedding")
        lengths = {len(row) if isinstance(row, list) else -1 for row in rows}
        if len(lengths) != 1 or -1 in lengths:
            raise EmbedderError(f"{self.where} returned embeddings of different lengths")
        dim = lengths.pop()
        if self._dim is None:  # undeclared: the first answer says it
            self._dim = dim
        elif dim != self._dim:
            raise EmbedderError(
                f"{self.where} returned vectors of {dim} dimensions, not {self._dim}"
            )
        try:
            vectors = np.array(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise EmbedderError(f"{self.where} returned embeddings that are not numbers") from None
        if not np.isfinite(vectors).all():
            raise EmbedderError(f"{self.where} returned NaN or infinite values")
        usage = payload.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
            self.meter.add(tokens=tokens)
        else:
            self.meter.add(tokens=sum(map(estimate_tokens, texts)), estimated=True)
        return vectors

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._client.close()


def _read_by(response: httpx.Response, deadline: float) -> None:
    """Read the body, cutting the connection at ``deadline``: httpx's timeouts bound each read,
    so a server that trickles its answer (a slow loris) would hold the request for ever."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None

    def cut() -> None:
        assert sock is not None
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    watchdog.daemon = True
    if sock is not None:
        watchdog.start()
    try:
        response.read()
    finally:
        watchdog.cancel()


def _status(response: httpx.Response) -> str:
    return f"{response.status_code} {response.reason_phrase}".strip()


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _wait(state: Any) -> float:
    """Exponential backoff with full jitter (0.5 s, 1 s, 2 s… up to 30 s), or the server's
    Retry-After when it gives one (plus a little jitter, so clients do not return in step)."""
    import random

    import tenacity

    backoff = float(tenacity.wait_random_exponential(multiplier=0.5, max=30)(state))
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if isinstance(exc, _Retry) and exc.retry_after is not None:
        return exc.retry_after + random.uniform(0, 0.1 * max(exc.retry_after, 1.0))
    return backoff

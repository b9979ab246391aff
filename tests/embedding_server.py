"""An OpenAI-compatible embeddings server around real sentence-transformers models, for the specs,
the demo and the benchmarks: ``POST /v1/embeddings`` in the shape of OpenAI's API reference
(``input`` a string or a list, ``dimensions``, ``encoding_format: float``; ``data[].index``,
``usage.prompt_tokens``; errors as ``{"error": {"message", "type"}}``).

Specs drive it from Python: ``faults`` is a queue of misbehaviours, one per request (429 with
Retry-After, 500, a timeout, a dropped connection, a truncated body, a wrong dimension, NaN,
shuffled ``index``, a missing vector, another model from this request on, a slow-loris answer); ``requested`` logs every text asked for; ``serve`` swaps
the model behind a name. Listens on 127.0.0.1 only.

    python tests/embedding_server.py --model NAME=FOLDER [--port 8900] [--api-key-env VAR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

FAULTS = (
    "429",
    "500",
    "timeout",
    "drop",
    "truncate",
    "dimension",
    "nan",
    "shuffle",
    "count",
    "swap",
    "slow",
)


@dataclass
class Fault:
    kind: str
    retry_after: float | None = None  # 429: the Retry-After header, in seconds
    seconds: float = 5.0  # timeout: how long the answer is held back; slow: how long it trickles
    model: Path | None = None  # swap: the model served under the name from this request on


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout spec) leaves a broken pipe: expected. Anything else is
        # the server's own fault, and shown.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class EmbeddingServer:
    """``models`` maps a served name to a sentence-transformers folder."""

    def __init__(
        self, models: dict[str, Path], *, api_key: str | None = None, port: int = 0
    ) -> None:
        self._models: dict[str, Any] = {}
        for name, path in models.items():
            self.serve(name, path)
        self.api_key = api_key
        self.faults: deque[tuple[int, Fault]] = deque()  # (request number, fault)
        self.requested: list[str] = []
        self.requests = 0
        self.lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._server = _Quiet(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def serve(self, name: str, path: Path) -> None:
        """Serve the model in ``path`` under ``name`` from now on (the same name, other vectors)."""
        from sentence_transformers import SentenceTransformer

        self._models[name] = SentenceTransformer(str(path), device="cpu", local_files_only=True)

    def start(self) -> EmbeddingServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, *faults: Fault | str, after: int = 0) -> None:
        """``faults`` answer the requests that follow the next ``after`` ones, one each."""
        with self.lock:
            start = self.requests + after + 1
            for i, fault in enumerate(faults):
                self.faults.append((start + i, fault if isinstance(fault, Fault) else Fault(fault)))

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requested.clear()
            self.requests = 0

    def embed(self, name: str, texts: list[str], dimensions: int | None) -> tuple[Any, int]:
        """One request's vectors and tokens. One model call at a time, as a serving stack's
        batcher does (a fast tokenizer is not safe to share between threads); requests still
        overlap their network and JSON work with it."""
        model = self._models[name]
        with self._model_lock:
            vectors = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
            tokens = sum(map(len, token_ids(model, texts)))
        if dimensions is not None:  # as OpenAI's text-embedding-3: shortened, then unit length
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors, tokens


def token_ids(model: Any, texts: list[str]) -> list[list[int]]:
    """Each text's tokens: a transformers tokenizer, or a static model's ``tokenizers`` one."""
    tokenizer = model.tokenizer
    if callable(tokenizer):
        return list(tokenizer(texts)["input_ids"])
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def _handler(server: EmbeddingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != "/v1/embeddings":
                return self._error(404, f"no route {self.path}")
            if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                return self._error(401, "Incorrect API key provided")
            try:
                request = json.loads(body)
                texts = request["input"]
                texts = [texts] if isinstance(texts, str) else list(texts)
                name = request["model"]
            except (ValueError, KeyError, TypeError):
                return self._error(400, "malformed request")
            if name not in server._models:
                return self._error(404, f"The model `{name}` does not exist")
            with server.lock:
                server.requests += 1
                due = server.faults and server.faults[0][0] <= server.requests
                fault = server.faults.popleft()[1] if due else None
            if fault is not None and fault.kind == "swap":
                assert fault.model is not None
                server.serve(name, fault.model)
            elif fault is not None and self._misbehave(fault):
                return
            with server.lock:
                server.requested.extend(texts)
            vectors, tokens = server.embed(name, texts, request.get("dimensions"))
            data = [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ]
            if fault is not None:
                data = _spoil(fault.kind, data)
            answer = {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            self._send(200, json.dumps(answer).encode())

        def _misbehave(self, fault: Fault) -> bool:
            """Answer with ``fault`` instead; False for faults that spoil a real answer."""
            if fault.kind == "429":
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                self._error(429, "Rate limit reached", headers)
            elif fault.kind == "500":
                self._error(500, "The server had an error while processing your request")
            elif fault.kind == "timeout":
                time.sleep(fault.seconds)
                self._error(503, "too late")
            elif fault.kind == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
            elif fault.kind == "slow":  # a slow loris: headers at once, then a trickle
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                until = time.monotonic() + fault.seconds
                with contextlib.suppress(OSError):
                    while time.monotonic() < until:
                        self.wfile.write(b" " * 64)
                        self.wfile.flush()
                        time.sleep(0.5)
                self.close_connection = True
            elif fault.kind == "truncate":
                self._send(200, b'{"object": "list", "data": [{"object": "embedding", "ind')
            else:
                return False
            return True

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
            self._send(status, body, headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _spoil(kind: str, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if kind == "dimension":
        for item in data:
            item["embedding"] = item["embedding"][:-1]
    elif kind == "nan":
        data[0]["embedding"][0] = float("nan")  # json.dumps writes NaN, as a careless server may
    elif kind == "shuffle":
        data = data[::-1]  # every index still right: the client must put them back in order
    elif kind == "count":
        data = data[:-1]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--api-key-env", help="require the key in this environment variable")
    args = parser.parse_args()
    models = {name: Path(path) for name, _, path in (m.partition("=") for m in args.model)}
    key = os.environ[args.api_key_env] if args.api_key_env else None
    server = EmbeddingServer(models, api_key=key, port=args.port)
    print(f"serving {', '.join(models)} at {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._server.serve_forever()


if __name__ == "__main__":
    main()

"""Where documents, queries and relevance judgements come from.

A source is any iterable of :class:`Document`; env.py returns one per call. Order matters only for
resuming a killed backfill, which skips by position: keep a source's order stable.
"""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from embedmig.config import Config
from embedmig.errors import SourceError

Qrels = dict[str, dict[str, int]]


class Document(NamedTuple):
    key: str
    text: str
    # A query's other fields (a queries file's, a logged query's), read by eval.segment_by.
    meta: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class JsonlSource:
    """One JSON object a line; ``title_field``, when set and present, is prepended to the text.
    ``with_meta``: each document keeps its other fields as ``meta`` (queries, for segments)."""

    path: Path
    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = None
    with_meta: bool = False

    def __iter__(self) -> Iterator[Document]:
        try:
            fh = self.path.open("rb")
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from None
        # Lines are decoded one by one (not by a text stream reading ahead), so an error names
        # the line it is on.
        key_type: type | None = None
        with fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise self._error(lineno, "not valid UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise self._error(lineno, f"invalid JSON ({exc.msg})") from None
                doc, kind = self._document(row, lineno)
                # "1" and 1 would both become key "1": one file holds one kind of id.
                if key_type is not None and kind is not key_type:
                    raise self._error(
                        lineno,
                        f"{self.id_field!r} is a {_kind(kind)} but earlier ones are "
                        f"{_kind(key_type)}s; use one type for every id",
                    )
                key_type = kind
                yield doc

    def count_documents(self) -> int | None:
        """The number of lines, read fast (a progress total, not a validation)."""
        lines, last = 0, b"\n"
        try:
            with self.path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    lines += block.count(b"\n")
                    last = block[-1:]
        except OSError:
            return None
        return lines + (last != b"\n")

    def _error(self, line: int, what: str) -> SourceError:
        return SourceError(f"{self.path}:{line}: {what}", path=self.path, line=line)

    def _document(self, row: Any, lineno: int) -> tuple[Document, type]:
        if not isinstance(row, dict):
            raise self._error(lineno, "expected a JSON object")
        key = row.get(self.id_field)
        text = row.get(self.text_field)
        if key is None or isinstance(key, (dict, list, bool, float)):
            raise self._error(lineno, f"missing or invalid {self.id_field!r}")
        if not isinstance(text, str):
            raise self._error(lineno, f"{self.text_field!r} is not a string")
        if self.title_field:
            title = row.get(self.title_field)
            if isinstance(title, str) and title.strip():
                text = f"{title} {text}"
        meta = None
        if self.with_meta:
            used = (self.id_field, self.text_field, self.title_field)
            meta = {name: value for name, value in row.items() if name not in used}
        return Document(str(key), text, meta), type(key)


@dataclass(frozen=True)
class SqlSource:
    """Rows of a SQL query through SQLAlchemy, streamed (server-side cursor where supported)."""

    url: str
    query: str
    id_column: str = "id"
    text_column: str = "text"
    params: Mapping[str, Any] | None = None

    def __iter__(self) -> Iterator[Document]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=1000).execute(
                    sa.text(self.query), dict(self.params or {})
                )
                for row in result.mappings():
                    yield Document(str(row[self.id_column]), str(row[self.text_column]))
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(f"corpus query failed: {exc.__class__.__name__}: {exc}") from None
        except KeyError as exc:
            raise SourceError(f"corpus query returned no column {exc}") from None
        finally:
            engine.dispose()

    def count_documents(self) -> int | None:
        """``COUNT(*)`` of the query (a progress total); None when the database refuses it."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                counted = sa.select(sa.func.count()).select_from(
                    sa.text(self.query).columns().subquery("embedmig_count")
                )
                return int(conn.execute(counted, dict(self.params or {})).scalar_one())
        except sa.exc.SQLAlchemyError:
            return None
        finally:
            engine.dispose()


@dataclass(frozen=True)
class IterableSource:
    """Documents from Python: a function returning (key, text) pairs, called once per pass."""

    factory: Callable[[], Iterable[tuple[str, str]]]

    def __iter__(self) -> Iterator[Document]:
        key_type: type | None = None
        for n, item in enumerate(self.factory(), 1):
            try:
                key, text = item
            except (TypeError, ValueError):
                raise SourceError(
                    f"document {n}: expected a (key, text) pair, got {item!r:.60}"
                ) from None
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise SourceError(f"document {n}: key {key!r:.40} must be a string or an integer")
            if key_type is not None and type(key) is not key_type:
                raise SourceError(
                    f"document {n}: key {key!r:.40} is a {_kind(type(key))} but earlier ones are "
                    f"{_kind(key_type)}s; use one type for every key"
                )
            key_type = type(key)
            if not isinstance(text, str):
                raise SourceError(
                    f"document {key!r:.40}: text must be a string, got {type(text).__name__}"
                )
            yield Document(str(key), text)


class Corpus:
    """What env.py's ``corpus()`` returned, checked as it is read, with its size when the source
    can tell it cheaply (a JSONL file's lines, a SQL ``COUNT(*)``)."""

    def __init__(self, docs: Iterable[Document]) -> None:
        self.docs = docs

    def __iter__(self) -> Iterator[Document]:
        return checked(self.docs)

    def total(self) -> int | None:
        count = getattr(self.docs, "count_documents", None)
        return count() if callable(count) else None


def checked(docs: Iterable[Document]) -> Iterator[Document]:
    """``docs``, refusing one that env.py built of the wrong types (before it is embedded)."""
    for doc in docs:
        if not isinstance(doc.text, str):
            raise SourceError(
                f"document {doc.key!r:.40}: text is {type(doc.text).__name__}, not str"
            )
        yield doc


def _kind(kind: type) -> str:
    return "string" if kind is str else "number"


def corpus_from_config(config: Config) -> JsonlSource:
    return JsonlSource(
        path=_existing(config, "corpus"),
        id_field=config.require("corpus.id_field"),
        text_field=config.require("corpus.text_field"),
        title_field=config.get("corpus.title_field"),
    )


def queries_from_config(config: Config) -> JsonlSource | None:
    if config.get("queries") is None:
        return None
    return JsonlSource(
        path=_existing(config, "queries"),
        id_field=config.require("queries.id_field"),
        text_field=config.require("queries.text_field"),
        with_meta=True,
    )


def qrels_from_config(config: Config) -> Qrels | None:
    path = config.path_option("qrels")
    return read_qrels(_existing(config, "qrels")) if path is not None else None


def read_qrels(path: Path) -> Qrels:
    """BEIR qrels: tab-separated ``query-id corpus-id score`` with a header line."""
    qrels: Qrels = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh, delimiter="\t")
            header = next(rows, None)
            if header is None:
                raise SourceError(f"{path} is empty", path=path)
            for lineno, row in enumerate(rows, 2):
                if not row:
                    continue
                if len(row) < 3:
                    raise SourceError(
                        f"{path}:{lineno}: expected query-id, corpus-id, score",
                        path=path,
                        line=lineno,
                    )
                try:
                    score = int(row[2])
                except ValueError:
                    raise SourceError(
                        f"{path}:{lineno}: score {row[2]!r} is not an integer",
                        path=path,
                        line=lineno,
                    ) from None
                qrels.setdefault(row[0], {})[row[1]] = score
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not valid UTF-8", path=path) from None
    return qrels


def _existing(config: Config, key: str) -> Path:
    path = config.path_option(key)
    if path is None:
        raise SourceError(f"option {key!r} is not set: point it at a file in {config.path}")
    try:
        mode = path.stat().st_mode  # follows links: a loop raises ELOOP, a dangling one ENOENT
    except FileNotFoundError:
        raise SourceError(f"{key} file {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"{key} file {path} cannot be opened: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise SourceError(f"{key} {path} is a directory; name a file")
    if not stat.S_ISREG(mode):
        # A FIFO or a device would block or never end; a backfill must be able to read again.
        raise SourceError(f"{key} {path} is not a regular file (a pipe or a device); name a file")
    return path

"""embedmig's own tables (SQLAlchemy Core). Changes ship as alembic migrations in ``migrations/``."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# alias -> revision it is at; the alias's live index is the one row of `index` in state "live".
version = sa.Table(
    "embedmig_version",
    metadata,
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("revision", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

index = sa.Table(
    "embedmig_index",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("revision", sa.String(64), nullable=False),
    sa.Column("path", sa.String(1024), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("metric", sa.String(16), nullable=False),
    sa.Column("factory", sa.String(255), nullable=False),
    sa.Column("ntotal", sa.BigInteger, nullable=False, default=0),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    # The journal position the file reflects: changes after it are the index's tail.
    sa.Column("base_seq", sa.BigInteger, nullable=False, server_default="0"),
    # The embedder's probe vectors when the index was built (embedders.probes): drift is measured
    # against them. Null for indexes built before probes.
    sa.Column("probe", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # Where the index lives: "faiss" (``path`` is its file) or "pgvector" (``path`` is its table).
    sa.Column("store", sa.String(16), nullable=False, server_default="faiss"),
    sa.Index("ix_embedmig_index_alias_state", "alias", "state"),
    # At most one live index per alias, enforced by the database rather than by care.
    sa.Index(
        "uq_embedmig_index_live",
        "alias",
        unique=True,
        sqlite_where=sa.text("state = 'live'"),
        postgresql_where=sa.text("state = 'live'"),
    ),
)

history = sa.Table(
    "embedmig_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("revision", sa.String(64), nullable=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("from_index", sa.Integer, nullable=True),
    sa.Column("to_index", sa.Integer, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("forced", sa.Boolean, nullable=False, default=False),
    sa.Column("metrics", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_embedmig_history_alias", "alias"),
)

# Stable int64 ids for string keys, shared by every index of an alias so results compare by id.
doc = sa.Table(
    "embedmig_doc",
    metadata,
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("snippet", sa.Text, nullable=False, default=""),
    sa.Column("meta", sa.Text, nullable=True),
    sa.UniqueConstraint("alias", "key", name="uq_embedmig_doc_key"),
)

checkpoint = sa.Table(
    "embedmig_checkpoint",
    metadata,
    sa.Column("index_id", sa.Integer, sa.ForeignKey("embedmig_index.id"), primary_key=True),
    sa.Column("docs_consumed", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    # JSON: a digest of the documents consumed so far (a resume over a source that changed under
    # the checkpoint would otherwise skip, or keep, the wrong ones) and the counts of the report.
    sa.Column("progress", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# What each index was built from, per document: the hash of the corpus's text as its backfill read
# it (NULL: not in the corpus) and of the text its file holds (NULL: not in the file). The next
# migration tells the corpus's own changes from writes the corpus never received by these.
manifest = sa.Table(
    "embedmig_manifest",
    metadata,
    sa.Column("index_id", sa.Integer, sa.ForeignKey("embedmig_index.id"), primary_key=True),
    sa.Column("doc_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("corpus_sha", sa.BigInteger, nullable=True),
    sa.Column("sha", sa.BigInteger, nullable=True),
)

# One migration at a time per alias: a lease renewed by a heartbeat while the holder runs.
lock = sa.Table(
    "embedmig_lock",
    metadata,
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    # The generation: a takeover bumps it. (owner, token) is the holder's fencing token.
    sa.Column("token", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("command", sa.String(64), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

# Per-alias counters. Every transaction that assigns ids or journals changes updates this row
# first, which serializes them per alias on SQLite and PostgreSQL alike: sequence numbers are then
# gap-free and committed in order, so "everything after seq N" is a safe cursor for readers.
sequence = sa.Table(
    "embedmig_sequence",
    metadata,
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("next_doc_id", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    # Catalog changes readers follow (swap, rollback, new file, adapter): with last_seq, the clock
    # a searcher reads to learn whether anything changed (``catalog.reader_clock``).
    sa.Column("changes", sa.BigInteger, nullable=False, server_default="0"),
)

# The change journal: every acknowledged upsert and delete of an alias, in order.
journal = sa.Table(
    "embedmig_journal",
    metadata,
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("doc_id", sa.BigInteger, nullable=False),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("meta", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# The vector of an upsert for each index it was written to (live, shadow, holdover): float32 bytes.
journal_vector = sa.Table(
    "embedmig_journal_vector",
    metadata,
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("index_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

# A 64-bit key that SQLite still autoincrements (only its INTEGER PRIMARY KEY does).
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Queries searchers served, when ``searcher.log_queries`` > 0; trimmed to ``searcher.log_max``.
query_log = sa.Table(
    "embedmig_query_log",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sha", sa.BigInteger, nullable=False),  # counts traffic even without the text
    sa.Column("text", sa.Text, nullable=True),  # NULL when searcher.log_text = false
    sa.Column("k", sa.Integer, nullable=False),
    # JSON: what the application passed with the query (search(..., meta=)), for segments.
    sa.Column("meta", sa.Text, nullable=True),
    sa.Index("ix_embedmig_query_log_alias_id", "alias", "id"),
)

# A canary: while open, searchers of the alias mirror a share of their queries to the shadow.
canary = sa.Table(
    "embedmig_canary",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("revision", sa.String(64), nullable=False),
    sa.Column("index_id", sa.Integer, sa.ForeignKey("embedmig_index.id"), nullable=False),
    sa.Column("live_id", sa.Integer, nullable=True),  # the live index it compares against
    sa.Column("fraction", sa.Float, nullable=False),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("min_queries", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("dropped", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("report", sa.Text, nullable=True),  # the offline report the canary continues
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(
        "uq_embedmig_canary_open",
        "alias",
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    ),
)

# One mirrored query: the top-k the user got from the live index, and the shadow's, as arrays.
canary_result = sa.Table(
    "embedmig_canary_result",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("canary_id", sa.Integer, sa.ForeignKey("embedmig_canary.id"), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("text", sa.Text, nullable=True),  # NULL when searcher.log_text = false
    sa.Column("old_ids", sa.LargeBinary, nullable=False),  # int64 x k
    sa.Column("old_scores", sa.LargeBinary, nullable=False),  # float32 x k
    sa.Column("new_ids", sa.LargeBinary, nullable=False),
    sa.Column("new_scores", sa.LargeBinary, nullable=False),
    sa.Index("ix_embedmig_canary_result_canary", "canary_id", "id"),
)

# A learned map that lets a model query an index another model built: an adapter revision's
# (live while the alias serves through it) or a bridge during a backfill. Its file is verified by
# its sha256 like an index's; ``fingerprint``, ``model`` and ``probe`` are the querying model's.
adapter = sa.Table(
    "embedmig_adapter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("revision", sa.String(64), nullable=False),
    sa.Column("index_id", sa.Integer, sa.ForeignKey("embedmig_index.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("path", sa.String(1024), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("pairs", sa.Integer, nullable=False),
    sa.Column("probe", sa.LargeBinary, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_embedmig_adapter_alias_state", "alias", "state"),
    sa.Index(
        "uq_embedmig_adapter_live",
        "alias",
        unique=True,
        sqlite_where=sa.text("state = 'live'"),
        postgresql_where=sa.text("state = 'live'"),
    ),
)

# One row per running searcher, written by its heartbeat off the request path: the index it
# served last and since when. ``drift``: why it could not serve the live index (a drifted
# embedder, say), NULL while it can. A clean close deletes the row; a crashed reader's row goes
# silent and is forgotten by ``prune``.
reader = sa.Table(
    "embedmig_reader",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("index_id", sa.Integer, nullable=True),
    sa.Column("since", sa.DateTime(timezone=True), nullable=True),
    sa.Column("served", sa.BigInteger, nullable=False),
    sa.Column("drift", sa.Text, nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_embedmig_reader_alias", "alias"),
)

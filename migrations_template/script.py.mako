"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from embedmig import Embedder, Gates

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
alias = ${repr(alias)}

old = ${old_embedder}
new = ${new_embedder}
% if adapter:
# An adapter revision is also held to adapter_recall_ratio >= 0.95 (its recall@10 over a full
# re-embed's) unless a gate here bounds an adapter_* metric. Metric names: embedmig.gates.METRICS.
gates = Gates()
% elif old:
# Every gate is min_<metric> or max_<metric>; metric names: embedmig.gates.METRICS.
gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)
% else:
# The alias's first index: nothing to compare with, so no gates by default.
gates = Gates()
% endif
% if index_store == "pgvector":
# The index is a table in the history database (PostgreSQL with pgvector); the alias is a view.
index_store = "pgvector"
# [vector|halfvec,]hnsw[,m=16,ef_construction=64,ef_search=40], ivfflat[,lists=N,probes=N], exact
pgvector_index = ${repr(pgvector_index)}
% else:
index_factory = ${repr(index_factory)}  # any faiss.index_factory string: "HNSW32", "IVF1024,PQ48", ...
% endif


def upgrade(ctx):
% if adapter:
    ctx.adapt(${repr(adapter)})  # a map from `new` into the live index's space; no re-embedding
    ctx.evaluate()  # the map against a full re-embed (forecast); raises GateFailed below 0.95
    ctx.swap()  # the alias serves its index to `new` through the map, recorded in history


def downgrade(ctx):
    ctx.rollback()  # the alias serves its index to `old` again; nothing re-embedded
% else:
    ctx.backfill()  # shadow index with `new`; resumes after a kill
    ctx.evaluate()  # old vs new on the query sample; raises GateFailed when a gate fails
    ctx.swap()  # atomic alias swap, recorded in history


def downgrade(ctx):
    ctx.rollback()  # alias back to the index live before this revision; no re-embedding
% endif

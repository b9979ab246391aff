#!/usr/bin/env bash
# The demo's migration with the first model behind an endpoint, as most teams embed:
# all-MiniLM-L6-v2 served by an OpenAI-compatible server on 127.0.0.1 (tests/embedding_server.py,
# the shape of OpenAI's /v1/embeddings) -> the distilled static model, in this process -> back.
# init -> revision (endpoint) -> upgrade -> probe -> revision (local) -> priced dry run -> upgrade
# -> downgrade -1 (back on the endpoint, nothing re-embedded) -> upgrade again (from the cache).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${EMBEDMIG_VENV:-$ROOT/.venv}
WORK=$HERE/work-http
PORT=${EMBEDMIG_DEMO_PORT:-8911}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

make -C "$ROOT" --no-print-directory install VENV="$VENV"
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
python "$HERE/models.py" models

say "an OpenAI-compatible server with MiniLM at http://127.0.0.1:$PORT/v1, its key in DEMO_API_KEY"
export DEMO_API_KEY="demo-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
python "$ROOT/tests/embedding_server.py" --model all-MiniLM-L6-v2=models/all-MiniLM-L6-v2 \
  --port "$PORT" --api-key-env DEMO_API_KEY > server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
until grep -q serving server.log 2>/dev/null; do sleep 0.5; done

embedmig init migrations
python "$HERE/configure.py" embedmig.ini embedder.price_per_million_tokens=0.02

say "first revision: 'papers' on MiniLM behind the endpoint"
embedmig revision -m "papers on the MiniLM endpoint" --alias papers --new all-MiniLM-L6-v2 \
  --backend openai --base-url "http://127.0.0.1:$PORT/v1" --api-key-env DEMO_API_KEY --rev-id a1e0c2f4b6d8
embedmig upgrade
embedmig probe

say "second revision: move 'papers' off the endpoint, to the static model in this process"
embedmig revision -m "papers to static MiniLM" --alias papers --new models/static-minilm-256 --rev-id b3d5f7a9c1e2
sed -i 's/^gates = .*/gates = Gates(min_recall_ratio=0.75, min_overlap_at_100=0.3)/' migrations/versions/b3d5f7a9c1e2_*.py
embedmig upgrade --dry-run --sample 400
embedmig upgrade --report reports/upgrade.json
embedmig search papers "stem cells drive glioblastoma growth" -k 3

say "downgrade -1: back on the endpoint's index; nothing is re-embedded"
embedmig downgrade -1
embedmig search papers "stem cells drive glioblastoma growth" -k 3

say "upgrade again: the static model's vectors come from the cache"
embedmig upgrade
embedmig history
if grep -rq "$DEMO_API_KEY" . ; then echo "the key was written somewhere" >&2; exit 1; fi
say "done: the key is in no file of $WORK"

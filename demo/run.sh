#!/usr/bin/env bash
# The embedmig story on real data, from a fresh machine: install, then
# init -> first revision (MiniLM) -> revision to a distilled static model -> dry-run report ->
# review the gates -> upgrade -> search -> downgrade -> history.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${EMBEDMIG_VENV:-$ROOT/.venv}
WORK=$HERE/work
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing into $VENV (CPU torch first, so pip does not pull a CUDA build)"
make -C "$ROOT" --no-print-directory install VENV="$VENV"
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
say "models: all-MiniLM-L6-v2 (sha256 checked) and a static model distilled from it"
python "$HERE/models.py" models

say "embedmig init"
embedmig init migrations
# Point the environment at 1,000 SciFact abstracts, 300 claims as queries and their judgements.
python "$HERE/configure.py" embedmig.ini
grep -E "^(corpus|queries|qrels)" embedmig.ini

say "first revision: the alias 'papers' gets its first index, built with MiniLM"
embedmig revision -m "papers on MiniLM" --alias papers --new models/all-MiniLM-L6-v2 --rev-id 1f0e5c2a9b11
embedmig upgrade

say "second revision: move 'papers' to the static model (~100x cheaper to run)"
embedmig revision -m "papers to static MiniLM" --alias papers --new models/static-minilm-256 --rev-id 7c3d9e4b2a60
sed -n '/^old =/,/^index_factory/p' migrations/versions/7c3d9e4b2a60_*.py

say "dry run with the template's default gates (expected to fail: neighbours move a lot)"
embedmig upgrade --dry-run --sample 400 --report reports/dry-run-1.json || echo "(exit $? : gate failed, nothing changed)"

say "review: this team accepts the static model if it keeps 75% of recall@10 against the judgements"
sed -i 's/^gates = .*/gates = Gates(min_recall_ratio=0.75, min_overlap_at_100=0.3)/' migrations/versions/7c3d9e4b2a60_*.py
embedmig upgrade --dry-run --sample 400 --report reports/dry-run-2.html

say "upgrade: backfill the shadow index, evaluate on the full corpus, gate, swap"
embedmig upgrade --report reports/upgrade.json
embedmig current

say "search the alias (now served by the static model)"
embedmig search papers "stem cells drive glioblastoma growth" -k 5

say "downgrade -1: the alias points back at the MiniLM index; nothing is re-embedded"
embedmig downgrade -1
embedmig current
embedmig search papers "stem cells drive glioblastoma growth" -k 5

say "history"
embedmig history -v
say "done: reports (JSON, HTML) in $WORK/reports, indexes in $WORK/indexes, history in $WORK/embedmig.db"

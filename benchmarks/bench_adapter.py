"""How close does a fitted map bring a new model's queries to the old index, against the full
re-embed it stands in for, and what does it cost at query time?

BEIR SciFact (../shared/data/scifact): the 300 judged test claims over the 5,183 title +
abstract documents, with the demo's two real models: all-MiniLM-L6-v2 (384-d) and a static model
distilled from it (model2vec, 256-d). Every text is embedded once per model (cached with
``--cache``). Both directions: the old model built the live index, the new model embeds the
queries. For each map kind and pair count, each seed draws the pairs uniformly from the corpus
(as ``ctx.adapt()`` reads its sample; the judged claims are never fitted on) and fits with
``embedmig.migrate.fit.fit``, the code an upgrade runs; the adapted queries then search the
whole old index (exact, FAISS flat inner product).

Printed per direction, kind and pairs (mean over seeds, with the spread): recall@10 through the
map, its ratio to the re-embed's recall@10 (the default gate: ``adapter_recall_ratio >= 0.95``),
overlap@10 with the re-embed's top 10, and the fit's wall time. Then the query path with and
without the map (real model encode of one claim + the map + the flat search), interleaved,
medians: the map's share of a query.

    python benchmarks/bench_adapter.py [--seeds 5] [--pairs 300 1000 5000] [--cache DIR]

Measured 2026-12-05, 2 cores, 5 seeds (the README's "Adapters" has the table of every kind):
  MiniLM index, static queries: re-embed recall@10 0.535 (MiniLM itself 0.783); procrustes at
    300 / 1,000 / 5,000 pairs 0.500 / 0.597 / 0.630 (0.93 / 1.12 / 1.18 of the re-embed), affine
    0.674 (1.26), affine rank 64 0.551 (1.03), mlp 0.689 (1.29) at 5,000; overlap@10 with the
    re-embed 0.27-0.37. Fits: 0.01-0.17 s, mlp 3.9 s.
  static index, MiniLM queries: re-embed 0.783 (static itself 0.535); procrustes 0.551 / 0.631 /
    0.669 (0.70 / 0.81 / 0.85), affine 0.487 (0.62), rank 64 0.350 (0.45), mlp 0.505 (0.65);
    overlap@10 0.20-0.42. Every map fails the default 0.95 gate in this direction.
  Query path: the map alone 11.6 us (procrustes, 256->384), 11.7 us (384->256); mlp 34.4 and
    36.5 us. Through the map / after a re-embed: 1.004 and 1.022 behind MiniLM's encode (13.6 ms),
    1.297 and 1.419 behind the static model's (0.4 ms; the old index searched is 384-d, not 256).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ["HF_HUB_OFFLINE"] = "1"

from bench_forecast import CachedEmbedder, DataSet, encode_all, load_sets  # noqa: E402

from demo import scifact  # noqa: E402
from demo.models import distilled, minilm  # noqa: E402
from embedmig.embedders.adapted import Map  # noqa: E402
from embedmig.migrate.fit import MapSpec, fit  # noqa: E402

SPECS = (
    MapSpec("procrustes"),
    MapSpec("affine"),
    MapSpec("affine", rank=64),
    MapSpec("mlp"),
)


def keep_heap() -> None:
    """No trimming or mmap thresholds that move: every iteration reuses the same pages."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 1 << 30)


def flat(vectors: np.ndarray) -> object:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def top10(index: object, queries: np.ndarray) -> np.ndarray:
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), 10)  # type: ignore[attr-defined]
    return np.asarray(ids)


def recall(ids: np.ndarray, data: DataSet) -> float:
    """Mean recall@10 of the claims (row i of ``ids`` ranks claim i; ids are document rows)."""
    keys = [d.key for d in data.docs]
    scores = []
    for row, query in zip(ids, data.queries, strict=True):
        relevant = data.qrels[query.key]
        found = sum(1 for i in row if i >= 0 and keys[i] in relevant)
        scores.append(found / len(relevant))
    return float(np.mean(scores))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def accuracy(
    data: DataSet, cached: dict[str, CachedEmbedder], old: str, new: str, args: argparse.Namespace
) -> None:
    docs = [d.text for d in data.docs]
    claims = [q.text for q in data.queries]
    old_docs = cached[old].encode_documents(docs)
    new_docs = cached[new].encode_documents(docs)
    new_queries = cached[new].encode_queries(claims)
    live = flat(old_docs)
    reembed_ids = top10(flat(new_docs), new_queries)
    old_recall = recall(top10(live, cached[old].encode_queries(claims)), data)
    reembed = recall(reembed_ids, data)
    print(
        f"\n== old {old} (live index), new {new}: recall@10 of the old model {old_recall:.3f}, "
        f"of the full re-embed {reembed:.3f}",
        flush=True,
    )
    print(f"  {'map':<18}{'pairs':>6}{'recall@10':>16}{'ratio':>16}{'overlap@10':>16}{'fit s':>8}")
    for spec in SPECS:
        for pairs in args.pairs:
            rows: list[tuple[float, float, float, float]] = []
            for seed in range(args.seeds):
                pick = np.random.default_rng(seed).choice(len(docs), pairs, replace=False)
                started = time.perf_counter()
                mapping = fit(spec, new_docs[pick], old_docs[pick], normalize=True, seed=seed)
                seconds = time.perf_counter() - started
                ids = top10(live, mapping.apply(new_queries))
                got = recall(ids, data)
                rows.append((got, got / reembed, overlap(ids, reembed_ids), seconds))
            cols = np.array(rows)
            mean, spread = cols.mean(axis=0), cols.std(axis=0)
            print(
                f"  {spec.describe():<18}{pairs:>6}"
                + "".join(f"{m:>10.3f} ±{s:.3f}" for m, s in zip(mean[:3], spread[:3], strict=True))
                + f"{mean[3]:>8.2f}",
                flush=True,
            )


def query_cost(
    model: Path, mapping: Map, old_index: object, new_index: object, claims: list[str], rounds: int
) -> None:
    """One claim at a time, the new model's query path after a full re-embed (encode, search the
    new index) against the adapter's (encode, map, search the old index), interleaved round by
    round; then the map alone on one vector. Medians over rounds."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(model), device="cpu")

    def one(text: str, through: Map | None) -> np.ndarray:
        vector = encoder.encode([text], normalize_embeddings=True, show_progress_bar=False)
        if through is None:
            return top10(new_index, vector)
        return top10(old_index, through.apply(vector))

    def timed(run: Callable[[], object]) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    for text in claims[:20]:  # warm-up
        one(text, mapping)
        one(text, None)
    vector = encoder.encode(claims[:1], normalize_embeddings=True, show_progress_bar=False)
    reembed: list[float] = []
    adapted: list[float] = []
    alone: list[float] = []
    for _ in range(rounds):
        reembed.append(timed(lambda: [one(t, None) for t in claims]) / len(claims))
        adapted.append(timed(lambda: [one(t, mapping) for t in claims]) / len(claims))
        alone.append(timed(lambda: [mapping.apply(vector) for _ in range(1000)]) / 1000)
    a, b = statistics.median(reembed), statistics.median(adapted)
    print(
        f"  {mapping.kind} map {mapping.in_dim}->{mapping.out_dim}: the map alone "
        f"{statistics.median(alone) * 1e6:.1f} us a query; a query after a re-embed "
        f"{a * 1e6:.0f} us, through the map {b * 1e6:.0f} us (ratio {b / a:.3f}; medians of "
        f"{rounds} interleaved rounds of {len(claims)} claims)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pairs", type=int, nargs="+", default=[300, 1000, 5000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--cache", type=Path, help="keep the encodings here between runs")
    args = parser.parse_args()
    if not scifact.SCIFACT.is_dir():
        sys.exit(f"{scifact.SCIFACT} not found")
    keep_heap()
    work = args.cache or Path(tempfile.mkdtemp(prefix="bench-adapter-"))
    models = {"minilm": minilm(), "static": distilled(work / "static-model")}
    data = next(d for d in load_sets() if d.name == "claims")
    cached = encode_all(data, models, args.cache)
    directions = (("minilm", "static"), ("static", "minilm"))
    for old, new in directions if not args.skip_accuracy else ():
        accuracy(data, cached, old, new, args)
    print("\n== the query path (one claim at a time), 5,000 pairs, seed 0:")
    docs = [d.text for d in data.docs]
    claims = [q.text for q in data.queries]
    for old, new in directions:
        old_docs = cached[old].encode_documents(docs)
        new_docs = cached[new].encode_documents(docs)
        pick = np.random.default_rng(0).choice(len(docs), 5000, replace=False)
        old_index, new_index = flat(old_docs), flat(new_docs)
        for spec in (MapSpec("procrustes"), MapSpec("mlp")):
            mapping = fit(spec, new_docs[pick], old_docs[pick], normalize=True, seed=0)
            query_cost(models[new], mapping, old_index, new_index, claims, args.rounds)


if __name__ == "__main__":
    main()

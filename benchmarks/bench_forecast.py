"""Do dry-run forecasts land on what the upgrade then measures, and what does a dry run cost?

Two parts, both on BEIR SciFact (../shared/data/scifact) with the two real models of the demo:
all-MiniLM-L6-v2 and a static model distilled from it (model2vec, 256-d).

1. Accuracy and interval coverage. Every document and query is embedded once per model (real
   encodings, cached for the seeds); each seed then draws a sample and runs the dry run's own
   forecast (``embedmig.migrate.forecast.run``: the live index searched by FAISS, the sample
   ranked by extrapolation, bootstrap intervals) and compares it with the figures of the full
   corpus (what ``upgrade`` measures: the full new index searched with the same queries).
   Sets: the 300 judged test claims over title + abstract (both directions), and a known-item
   variant (each paper's title as a query, its abstract as the one relevant document; each
   seed draws 500 of the 5,183 titles, as ``eval.sample`` does). Samples of 5%, 10% and 20%.
2. Cost. A real project, one model live, a dry run to the other with a 10% sample and then the
   real upgrade, timed in the same process: the dry run's wall time / the upgrade's. Both
   directions: MiniLM -> static (the issue's target) and static -> MiniLM.

    python benchmarks/bench_forecast.py [--seeds 20] [--resamples 100] [--cache DIR]
        [--sets claims known-item] [--skip-accuracy] [--skip-cost] [--cost OLD NEW]

Targets (issue 11), at 10%: |forecast - realized| <= 0.02 for recall@10, nDCG@10 and their
deltas, <= 0.05 for overlap@10; 95% intervals covering in >= 90% of seeds; dry run <= 15% of the
upgrade's wall time. Issue 33 adds every forecast metric to the table, each with its tolerance
(0.02 for rates, 0.05 for quantiles and distances): the share of seeds within it is the last
column.

Measured 2026-12-06 (issue 33: every per-query figure drawn, the judged ranks too), 2 cores,
20 seeds at 10% and 10 seeds at 5% and 20%, 100 replicates, both sets and directions: the table
of every metric (mean |error|, share within tolerance, coverage) is in benchmarks/README.md. At
10% every interval of recall, overlap@10/100, Jaccard, RBO and the score shift covered in
>= 90% of seeds; nDCG@10 80-95%, MRR@10 80-90% (90-100% at 20%); overlap@1 and the depth-100
tails covered in 35-90% and are reported as not forecast.

Measured 2026-12-02, 2 cores (other jobs running), 20 seeds, 10% sample: mean |error|, share of
seeds within the target, share of intervals that held the realized value.
  claims, MiniLM -> static: recall@10 0.014 (80% within 0.02; covered 100%), nDCG@10 0.027 (40%;
    85%, its delta 95%), MRR@10 0.038 (80%), overlap@10 0.019 (100% within 0.05; 100%),
    overlap@100 0.007, RBO 0.020, Jaccard@10 0.014, recall_ratio 0.018, mean top-10 score delta
    0.004, KS 0.017 (all covered 90-100%).
  claims, static -> MiniLM: recall@10 0.017 (70%; 95%), nDCG@10 0.026 (40%; 90%, delta 95%),
    MRR@10 0.038 (80%), overlap@10 0.025 (90%; 95%), overlap@100 0.008, RBO 0.021, score delta
    0.004 (covered 90-100%).
  known-item (500 titles a seed), MiniLM -> static: recall@10 0.016 (75%; 95%), nDCG@10 0.026
    (70%; 80%), MRR@10 0.039 (75%), overlap@10 0.017 (100%; 95%), RBO 0.012, score delta 0.002
    (covered 85-100%).
  known-item, static -> MiniLM: recall@10 0.002 (100%; 100%), nDCG@10 0.014 (75%; 85%), MRR@10
    0.019 (85%), overlap@10 0.016 (100%; 95%), RBO 0.017, score delta 0.003; KS 0.042 (covered
    only 55%: the interpolated top-10 scores of a strong model are too even).
  With 5% and 20% (the same estimator, intervals before they were widened by the prior's
  disagreement): nDCG@10 mean |error| 0.039 at 5%, 0.019 at 20% (MiniLM -> static); recall@10
  0.026 and 0.011.
  Cost, MiniLM -> static, 10% (755 documents with the judged ones): dry run 15.1 s, upgrade
  35.9 s: 42%. The dry run encodes the 300 claims with both models (5.5 s) and runs the
  forecast with its 100 bootstrap replicates (9.4 s with another job on the second core); the
  upgrade's backfill with the static model is 5 s and its evaluation 31 s (MiniLM on the
  claims and the 200 pair-background abstracts).
  Cost, static -> MiniLM, 10% (755 documents): dry run 93.2 s, upgrade 583.5 s: 16% (the dry
    run is MiniLM on the sample and the judged documents, 81 s; the upgrade MiniLM on all
    5,183). Every forecast of that real run held the realized value in its interval (recall@10
    0.781 against 0.783, nDCG@10 0.655 against 0.645).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"

from demo import scifact  # noqa: E402
from demo.models import distilled, minilm  # noqa: E402
from embedmig.embedders import Embedder  # noqa: E402
from embedmig.embedders.base import Usage  # noqa: E402
from embedmig.metrics import report as rpt  # noqa: E402
from embedmig.metrics.relevance import Judgements  # noqa: E402
from embedmig.migrate import evaluate as ev  # noqa: E402
from embedmig.migrate import forecast as forecasting  # noqa: E402
from embedmig.sources import Document  # noqa: E402
from embedmig.store import files  # noqa: E402

METRICS = (
    "recall_at_10_new",
    "recall_at_10_delta",
    "ndcg_at_10_new",
    "ndcg_at_10_delta",
    "mrr_at_10_new",
    "mrr_at_10_delta",
    "recall_at_100_new",
    "recall_ratio",
    *(
        f"overlap_at_{k}{tail}"
        for k in (1, 10, 100)
        for tail in ("", "_p5", "_p50", "_p95", "_below_half")
    ),
    "jaccard_at_1",
    "jaccard_at_10",
    "jaccard_at_100",
    "rbo",
    "score_new_mean",
    "score_delta_mean",
    "score_shift",
    "score_ks",
    "score_wasserstein",
)
# Within this of the realized value in >= 80% of seeds (issue 33): quantiles 0.05, rates 0.02;
# a score's KS and Wasserstein are distances, held to 0.05.
TOLERANCE = {
    m: 0.05 if m.endswith(("_p5", "_p50", "_p95", "_ks", "_wasserstein")) else 0.02 for m in METRICS
}
TOLERANCE["recall_ratio"] = 0.03


class CachedEmbedder:
    """A real model's encodings, computed once: texts map to their rows."""

    def __init__(self, name: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.spec = Embedder(name)
        self.dim = vectors.shape[1]
        self._row = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._row[t] for t in texts]]

    encode_queries = encode_documents

    @property
    def usage(self) -> Usage:  # what a dry run's cost forecast reads: nothing is spent here
        return Usage()

    def describe(self) -> str:
        return self.spec.describe()


@dataclass
class DataSet:
    name: str
    docs: list[Document]
    queries: list[Document]
    qrels: dict[str, dict[str, int]]
    queries_per_seed: int | None  # None: all of them


def load_sets() -> list[DataSet]:
    corpus = [json.loads(line) for line in (scifact.SCIFACT / "corpus.jsonl").open()]
    claims = {
        q["_id"]: q["text"] for q in map(json.loads, (scifact.SCIFACT / "queries.jsonl").open())
    }
    qrels: dict[str, dict[str, int]] = {}
    for line in list((scifact.SCIFACT / "qrels" / "test.tsv").open())[1:]:
        qid, doc, grade = line.split("\t")
        qrels.setdefault(qid, {})[doc] = int(grade)
    claim_set = DataSet(
        "claims",
        [Document(d["_id"], f"{d['title']} {d['text']}".strip()) for d in corpus],
        [Document(q, claims[q]) for q in sorted(qrels)],
        qrels,
        None,
    )
    known = DataSet(
        "known-item",
        [Document(d["_id"], d["text"]) for d in corpus if d["text"].strip()],
        [Document("t" + d["_id"], d["title"]) for d in corpus if d["text"].strip()],
        {"t" + d["_id"]: {d["_id"]: 1} for d in corpus if d["text"].strip()},
        500,
    )
    return [claim_set, known]


def encode_all(
    data: DataSet, models: dict[str, Path], cache: Path | None
) -> dict[str, CachedEmbedder]:
    """Every text of ``data`` under each model (kept in ``cache`` between runs when given)."""
    from sentence_transformers import SentenceTransformer

    texts = list(dict.fromkeys([d.text for d in data.docs] + [q.text for q in data.queries]))
    out = {}
    for name, path in models.items():
        stored = cache / f"{data.name}-{name}.npy" if cache else None
        if stored is not None and stored.is_file():
            vectors = np.load(stored)
        else:
            model = SentenceTransformer(str(path), device="cpu")
            vectors = model.encode(
                texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False
            )
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                np.save(stored, vectors)
        out[name] = CachedEmbedder(name, texts, vectors.astype(np.float32))
    return out


def judgements(data: DataSet, queries: list[Document], column: dict[str, int]) -> Judgements:
    """The judgements of ``queries``, documents as their ``column``."""
    triples = [
        (row, column[doc], grade)
        for row, q in enumerate(queries)
        for doc, grade in data.qrels[q.key].items()
        if doc in column
    ]
    return Judgements(*(np.array(c, dtype=np.int64) for c in zip(*triples, strict=True)))


def realized(
    data: DataSet, queries: list[Document], old: CachedEmbedder, new: CachedEmbedder
) -> dict[str, float | None]:
    """The upgrade's figures: both full indexes searched with the same queries."""
    ids = np.arange(len(data.docs), dtype=np.int64)
    texts = [d.text for d in data.docs]
    judged = judgements(data, queries, {d.key: i for i, d in enumerate(data.docs)})
    results = []
    for side in (old, new):
        index = files.build(side.encode_documents(texts), ids, "Flat")
        scores, found = files.search(index, side.encode_queries([q.text for q in queries]), 100)
        results.append(rpt.Results(ids=found, scores=scores))
    return rpt.compute(
        results[0], results[1], candidates=len(ids), settings=rpt.Settings(), judged=judged
    ).metrics


def forecast(
    data: DataSet,
    queries: list[Document],
    old: CachedEmbedder,
    new: CachedEmbedder,
    live: object,
    fraction: float,
    seed: int,
    resamples: int,
) -> dict[str, float | None]:
    """The dry run's forecast with a seeded sample of ``fraction`` of the corpus."""
    rng = np.random.default_rng(seed)
    judged_keys = {doc for q in queries for doc in data.qrels[q.key]}
    judged_docs = [d for d in data.docs if d.key in judged_keys]
    rest = [d for d in data.docs if d.key not in judged_keys]
    size = round(fraction * len(data.docs))
    uniform = [rest[i] for i in rng.choice(len(rest), min(size, len(rest)), replace=False)]
    columns = {d.key: i for i, d in enumerate([*uniform, *judged_docs])}
    judged = judgements(data, queries, columns)
    report = forecasting.run(
        alias="bench",
        revision="r2",
        new=new,  # type: ignore[arg-type]
        old=forecasting.LiveSide(old, live, {d.key: i for i, d in enumerate(data.docs)}),  # type: ignore[arg-type]
        sample=forecasting.SampleDocs(uniform, judged_docs, len(data.docs)),
        columns=columns,
        queries=ev.QuerySet(queries, "bench", judged=judged),
        settings=rpt.Settings(seed=seed),
        resamples=resamples,
        pair_docs=200,
        notes=(),
    )
    return report.metrics


def accuracy(args: argparse.Namespace, models: dict[str, Path]) -> None:
    for data in (d for d in load_sets() if d.name in args.sets):
        print(
            f"\n== {data.name}: {len(data.docs):,} documents, encoding both models...", flush=True
        )
        cached = encode_all(data, models, args.cache)
        directions = [("minilm", "static"), ("static", "minilm")]
        for old_name, new_name in directions:
            old, new = cached[old_name], cached[new_name]
            live = files.build(
                old.encode_documents([d.text for d in data.docs]),
                np.arange(len(data.docs), dtype=np.int64),
                "Flat",
            )
            for fraction in args.fractions:
                rows: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in METRICS}
                started = time.perf_counter()
                for seed in range(args.seeds):
                    queries = data.queries
                    if data.queries_per_seed:
                        pick = np.random.default_rng(1000 + seed).choice(
                            len(queries), data.queries_per_seed, replace=False
                        )
                        queries = [queries[i] for i in sorted(pick)]
                    truth = realized(data, queries, old, new)
                    guess = forecast(data, queries, old, new, live, fraction, seed, args.resamples)
                    for m in METRICS:
                        value, low, high = (
                            guess.get(m),
                            guess.get(f"{m}_ci_low"),
                            guess.get(f"{m}_ci_high"),
                        )
                        if value is None or truth.get(m) is None or low is None or high is None:
                            continue
                        rows[m].append((value, low, high, float(truth[m])))  # type: ignore[arg-type]
                seconds = (time.perf_counter() - started) / args.seeds
                print(
                    f"\n{data.name}, {old_name} -> {new_name}, sample {fraction:.0%}, "
                    f"{args.seeds} seeds ({seconds:.1f} s per forecast)"
                )
                print(
                    f"  {'metric':<20}{'realized':>9}{'forecast':>9}{'interval (seed 0)':>22}"
                    f"{'mean |err|':>11}{'max |err|':>10}{'covered':>9}  target (share of seeds)"
                )
                for m, seen in rows.items():
                    if not seen:
                        continue
                    arr = np.array(seen)
                    err = np.abs(arr[:, 0] - arr[:, 3])
                    covered = np.mean(
                        (arr[:, 1] <= arr[:, 3] + 1e-12) & (arr[:, 3] <= arr[:, 2] + 1e-12)
                    )
                    target = f"|err| <= {TOLERANCE[m]}: {np.mean(err <= TOLERANCE[m]):.0%}"
                    print(
                        f"  {m:<20}{arr[0, 3]:>9.4f}{arr[:, 0].mean():>9.4f}"
                        f"   [{arr[0, 1]:.4f}, {arr[0, 2]:.4f}]{err.mean():>11.4f}"
                        f"{err.max():>10.4f}{covered:>9.0%}  {target}",
                        flush=True,
                    )


def cost(models: dict[str, Path], old: str, new: str) -> None:
    """Wall time of a dry run with a 10% sample against the real upgrade, in one process."""
    from embedmig import command

    root = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    config = scifact.project(root)
    command.revision(config, "first", alias="papers", new=str(models[old]), rev_id="f1")
    command.revision(config, "second", alias="papers", new=str(models[new]), rev_id="f2")
    print(f"\n== cost, {old} -> {new}: building the live {old} index of SciFact...", flush=True)
    command.upgrade(config, "f1")
    started = time.perf_counter()
    (dry,) = command.upgrade(config, "f2", dry_run=True, sample=0.1, force=True)
    dry_s = time.perf_counter() - started
    started = time.perf_counter()
    (real,) = command.upgrade(config, "f2", force=True)
    real_s = time.perf_counter() - started
    print(
        f"{old} -> {new}, sample 10% ({dry.sample_size} documents with the judged ones): "
        f"dry run {dry_s:.1f} s, upgrade {real_s:.1f} s: {dry_s / real_s:.0%} (target <= 15%)"
    )
    print(f"  dry run timings: { {k: round(v, 2) for k, v in dry.timings.items()} }")
    embedding = sum(v for k, v in dry.timings.items() if k.startswith("encode_"))
    rest = dry.timings["total_s"] - embedding
    print(
        f"  dry run: embedding {embedding:.1f} s, the rest {rest:.1f} s = "
        f"{rest / embedding:.0%} beyond the embedding (target <= 15%)"
    )
    print(f"  upgrade timings: { {k: round(v, 2) for k, v in real.timings.items()} }")
    print(f"  {'metric':<20}{'forecast':>9}{'interval':>22}{'realized':>10}")
    for m in METRICS:
        value = dry.metrics.get(m)
        low, high = dry.metrics.get(f"{m}_ci_low"), dry.metrics.get(f"{m}_ci_high")
        if value is None or real.metrics.get(m) is None:
            continue
        span = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        print(f"  {m:<20}{value:>9.4f}{span:>22}{real.metrics[m]:>10.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--cache", type=Path, help="keep the encodings here between runs")
    parser.add_argument("--sets", nargs="+", default=["claims", "known-item"])
    parser.add_argument(
        "--cost",
        nargs=2,
        action="append",
        metavar=("OLD", "NEW"),
        help="a migration to time (repeatable; default: minilm static, then static minilm)",
    )
    args = parser.parse_args()
    args.cost = args.cost or [("minilm", "static"), ("static", "minilm")]
    if not scifact.SCIFACT.is_dir():
        sys.exit(f"{scifact.SCIFACT} not found")
    work = Path(tempfile.mkdtemp(prefix="bench-forecast-models-"))
    models = {"minilm": minilm(), "static": distilled(work / "static-256")}
    if not args.skip_accuracy:
        accuracy(args, models)
    if not args.skip_cost:
        for old, new in args.cost:
            cost(models, old, new)


if __name__ == "__main__":
    main()

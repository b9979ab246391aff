"""Regenerate demo/data/ from BEIR SciFact in ../shared/data/scifact (maintainers only).

The subset: the 300 test claims, every abstract they judge relevant, and seeded random other
abstracts up to 1,000 documents; the ids are SciFact's own. See demo/data/README.md.
"""

import csv
import json
import random
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
DST = Path(__file__).resolve().parent / "data"
N_DOCS = 1000


def main() -> None:
    if not SRC.is_dir():
        sys.exit(f"{SRC} not found")
    with (SRC / "qrels" / "test.tsv").open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    judged = {r[1] for r in rows}
    test_queries = {r[0] for r in rows}
    corpus = [json.loads(line) for line in (SRC / "corpus.jsonl").open()]
    others = [d for d in corpus if d["_id"] not in judged]
    random.Random(0).shuffle(others)
    keep = judged | {d["_id"] for d in others[: N_DOCS - len(judged)]}
    DST.mkdir(exist_ok=True)
    with (DST / "corpus.jsonl").open("w") as out:
        for doc in corpus:
            if doc["_id"] in keep:
                out.write(
                    json.dumps({"_id": doc["_id"], "title": doc["title"], "text": doc["text"]})
                    + "\n"
                )
    with (DST / "queries.jsonl").open("w") as out:
        for line in (SRC / "queries.jsonl").open():
            q = json.loads(line)
            if q["_id"] in test_queries:
                out.write(json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n")
    with (DST / "qrels.tsv").open("w") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for r in rows:
            out.write("\t".join(r) + "\n")


if __name__ == "__main__":
    main()

"""Point a demo project's embedmig.ini at the demo data: 1,000 SciFact abstracts, 300 claims as
queries and their judgements (demo/data). Extra ``key=value`` arguments are appended as options.

    python demo/configure.py embedmig.ini [embedder.price_per_million_tokens=0.02 ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SETTINGS = {
    "corpus": "../data/corpus.jsonl",
    "corpus.id_field": "_id",
    "# corpus.title_field": "title",
    "# queries": "../data/queries.jsonl",
    "# queries.id_field": "_id",
    "# queries.text_field": "text",
    "# qrels": "../data/qrels.tsv",
}


def main(ini: Path, extra: list[str]) -> None:
    text = ini.read_text()
    for key, value in SETTINGS.items():
        pattern = rf"^{re.escape(key)} = .*$"
        text = re.sub(pattern, f"{key.lstrip('# ')} = {value}", text, flags=re.M)
    for option in extra:
        key, _, value = option.partition("=")
        text += f"{key.strip()} = {value.strip()}\n"
    ini.write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

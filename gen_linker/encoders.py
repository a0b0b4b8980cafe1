"""Sentence embeddings (sentence-transformers), with an on-disk cache for large text lists.

SimCSE-style retrieval needs the same call everywhere: `encode(texts)` gives L2-normalised
float32 rows, so a dot product is a cosine. Pools of demonstrations or entity texts are
encoded once per (model, texts) and kept as `.npy` files.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .models import resolve_sentence_encoder
from .paths import cache_root

_LOADED: dict[str, object] = {}


def _load(path: str):
    """One SentenceTransformer per folder per process: loading twice only costs time."""
    if path not in _LOADED:
        from sentence_transformers import SentenceTransformer

        _LOADED[path] = SentenceTransformer(path, device="cpu")
    return _LOADED[path]


class SentenceEncoder:
    def __init__(self, model: str | None = None) -> None:
        self.path = resolve_sentence_encoder(model)
        self.model = _load(self.path)

    @property
    def dim(self) -> int:
        """Embedding size."""
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=show_progress)
        return emb.astype(np.float32, copy=False)

    def encode_cached(self, texts: Sequence[str], cache_dir: str | Path | None = None,
                      batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        """`encode`, read from / written to `cache_dir` (default: the user cache)."""
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
        path = folder / f"emb-{text_digest(texts, self.path)}.npy"
        if path.exists():
            return np.load(path, allow_pickle=False)
        emb = self.encode(texts, batch_size=batch_size, show_progress=show_progress)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
            np.save(tmp, emb)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs re-encoding next time
        return emb


def text_digest(texts: Sequence[str], *extra: str) -> str:
    """A key for caches of per-text work: the texts, in order, plus settings."""
    h = hashlib.sha256("\x1f".join(extra).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x1e")
    return h.hexdigest()[:20]

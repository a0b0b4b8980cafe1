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


class TextEncoder:
    """A frozen text encoder: `encode(texts)` gives L2-normalised float32 rows; `encode_cached`
    keeps them on disk by (texts, `path`)."""

    path: str

    def encode(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        raise NotImplementedError

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


class SentenceEncoder(TextEncoder):
    """A sentence-transformers model (default: the packaged all-MiniLM-L6-v2)."""

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


class ClipTextEncoder(TextEncoder):
    """The text tower of a CLIP model folder (`clip:FOLDER`): DIM's text encoder in the paper.
    Texts are cut to the model's context (77 tokens for CLIP)."""

    def __init__(self, folder: str) -> None:
        from transformers import AutoTokenizer, CLIPModel

        if not Path(folder).exists():
            from .errors import GenLinkerError

            raise GenLinkerError(f"CLIP folder {folder} does not exist")
        self.path = str(folder)
        self.model = CLIPModel.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def encode(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                feats = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                feats = getattr(feats, "pooler_output", feats)
                out.append(torch.nn.functional.normalize(feats, dim=-1).float().numpy())
        return np.concatenate(out)


def text_encoder(spec: str | None) -> SentenceEncoder | ClipTextEncoder:
    """`clip:FOLDER` for a CLIP text tower, else a sentence-transformers folder or id (None: the
    packaged MiniLM)."""
    if spec and spec.startswith("clip:"):
        return ClipTextEncoder(spec.removeprefix("clip:"))
    return SentenceEncoder(spec)


def text_digest(texts: Sequence[str], *extra: str) -> str:
    """A key for caches of per-text work: the texts, in order, plus settings."""
    h = hashlib.sha256("\x1f".join(extra).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x1e")
    return h.hexdigest()[:20]

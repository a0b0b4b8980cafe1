"""Sentence embeddings (sentence-transformers), with an on-disk cache for large text lists.

SimCSE-style retrieval needs the same call everywhere: `encode(texts)` gives L2-normalised
float32 rows, so a dot product is a cosine. Pools of demonstrations or entity texts are
encoded once per (model, texts) and kept as `.npy` files: written resumably in chunks for
large lists (a million entities), and memory-mapped on request so that the processes of one
machine share them.
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
# From this many texts `encode_cached` writes its cache chunk by chunk, resumable; below, one
# `encode` call as always (the same rows bit for bit as before).
RESUMABLE_FROM = 50_000
RESUMABLE_CHUNK = 20_000


def _load(path: str):
    """One SentenceTransformer per folder per process: loading twice only costs time."""
    if path not in _LOADED:
        from sentence_transformers import SentenceTransformer

        from .rerankers import is_reranker_folder, load_biencoder

        # a bi-encoder trained by gen-linker train-reranker (LoRA on its base, or a full model)
        _LOADED[path] = load_biencoder(path) if is_reranker_folder(path) else SentenceTransformer(path, device="cpu")
    return _LOADED[path]


class TextEncoder:
    """A frozen text encoder: `encode(texts)` gives L2-normalised float32 rows; `encode_cached`
    keeps them on disk by (texts, `path`)."""

    path: str
    cache_key: str | None = None    # what cached embeddings are keyed by besides the texts (None: path)

    def encode(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def encode_reference(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        """What `encode_cached` stores: `encode`, in float32 where the encoder has a faster dtype."""
        return self.encode(texts, batch_size=batch_size, show_progress=show_progress)

    def encode_cached(self, texts: Sequence[str], cache_dir: str | Path | None = None,
                      batch_size: int = 128, show_progress: bool = False, mmap_mode: bool = False) -> np.ndarray:
        """`encode`, read from / written to `cache_dir` (default: the user cache).

        From `RESUMABLE_FROM` texts (a KB of a million entities: hours on a CPU) the rows are
        written chunk by chunk into the cache file itself, with the count done beside it: a
        killed run goes on from its last chunk. `mmap_mode`: return the cached rows memory-
        mapped read-only (the processes of a machine then share one copy), not read in."""
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
        path = folder / f"emb-{text_digest(texts, self.cache_key or self.path)}.npy"
        if path.exists():
            return np.load(path, mmap_mode="r" if mmap_mode else None, allow_pickle=False)
        if len(texts) >= RESUMABLE_FROM:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self._encode_into(texts, path, batch_size, show_progress)
                return np.load(path, mmap_mode="r" if mmap_mode else None, allow_pickle=False)
            except OSError:
                pass  # an unwritable cache: encode in memory, as below
        emb = self.encode_reference(texts, batch_size=batch_size, show_progress=show_progress)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
            np.save(tmp, emb)
            os.replace(tmp, path)
        except OSError:
            return emb  # an unwritable cache only costs re-encoding next time
        return np.load(path, mmap_mode="r", allow_pickle=False) if mmap_mode else emb

    def _encode_into(self, texts: Sequence[str], path: Path, batch_size: int, show_progress: bool) -> None:
        """Encode `texts` into `path` in chunks of `RESUMABLE_CHUNK`, resumable: the rows go
        into `<path>.partial.npy` (a memory-mapped .npy) and the count done into
        `<path>.partial.json` after each chunk is flushed. One process at a time (a lock
        file): a second one waiting for it then finds the finished file."""
        import fcntl
        import json

        from tqdm.auto import tqdm

        partial = path.with_name(path.stem + ".partial.npy")
        state = path.with_name(path.stem + ".partial.json")
        with open(path.with_name(path.stem + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return
            done = 0
            if partial.exists() and state.exists():
                info = json.loads(state.read_text())
                if info.get("rows") == len(texts) and info.get("dim") == self.dim:
                    done = int(info["done"])
            if done:
                rows = np.lib.format.open_memmap(partial, mode="r+")
            else:
                rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(texts), self.dim))
            bar = tqdm(total=len(texts), initial=done, desc="embeddings", unit="text", disable=not show_progress,
                       dynamic_ncols=True, mininterval=1.0)
            for lo in range(done, len(texts), RESUMABLE_CHUNK):
                hi = min(lo + RESUMABLE_CHUNK, len(texts))
                rows[lo:hi] = self.encode_reference(texts[lo:hi], batch_size=batch_size)
                rows.flush()
                tmp = state.with_name(state.name + ".tmp")
                tmp.write_text(json.dumps({"rows": len(texts), "dim": self.dim, "done": hi}))
                os.replace(tmp, state)
                bar.update(hi - lo)
            bar.close()
            del rows
            os.replace(partial, path)
            state.unlink(missing_ok=True)


class SentenceEncoder(TextEncoder):
    """A sentence-transformers model (default: the packaged all-MiniLM-L6-v2).

    `dtype` bfloat16 runs `encode`'s matmuls under torch's CPU autocast (weights stay float32,
    rows come back float32): 2.6x the texts/s of float32 with AMX, cosines within 4e-5 of
    float32's; `auto` as `hardware.default_dtype` says ($GEN_LINKER_DTYPE, else bf16 with AMX).
    The class defaults to float32 (exact; what training and direct use get); a linker loaded
    from a spec uses the spec's `candidates.encoder_dtype`, auto by default. What is cached
    (`encode_cached`: a KB's entities, a demonstration pool) is always encoded in float32
    (`encode_reference`), so that a cache means one thing whoever built it; mentions encoded in
    bf16 against float32 entity rows gave the same answers as float32 on 999 of 1,000 WikiMEL
    mentions (eval/results/encoder_dtype.md)."""

    def __init__(self, model: str | None = None, dtype: str = "float32") -> None:
        from .hardware import resolve_dtype

        self.dtype = resolve_dtype(dtype)
        if self.dtype not in ("float32", "bfloat16"):
            from .errors import GenLinkerError

            raise GenLinkerError(f"sentence encoders run in float32 or bfloat16, not {self.dtype}")
        self.path = resolve_sentence_encoder(model)
        self.model = _load(self.path)
        self.cache_key = _weights_key(self.path)

    @property
    def dim(self) -> int:
        """Embedding size."""
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, batch_size, show_progress, self.dtype)

    def encode_reference(self, texts: Sequence[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, batch_size, show_progress, "float32")

    def _encode(self, texts: Sequence[str], batch_size: int, show_progress: bool, dtype: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import contextlib

        import torch

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
        with autocast:
            emb = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=show_progress)
        emb = emb.astype(np.float32, copy=False)
        if dtype == "bfloat16":        # normalised in bf16: renormalise the float32 rows
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb


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


def _weights_key(path: str) -> str:
    """A trained bi-encoder's cache key is its weights' hash, not its path: the folder can move
    (`gen-linker adapt` writes it to a temporary folder first) and keep its cached embeddings."""
    from .rerankers import is_reranker_folder

    folder = Path(path)
    if not is_reranker_folder(folder):
        return path
    h = hashlib.sha256()
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (folder / name).exists():
            with (folder / name).open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return "biencoder:" + h.hexdigest()[:16]


def text_digest(texts: Sequence[str], *extra: str) -> str:
    """A key for caches of per-text work: the texts, in order, plus settings."""
    h = hashlib.sha256("\x1f".join(extra).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x1e")
    return h.hexdigest()[:20]

"""Approximate nearest neighbours over entity embeddings (faiss IVF), for KBs too large for an
exact search per mention.

Below `candidates.EXACT_BELOW` entities the candidate retriever multiplies the query by every
entity row, as it always did. At a million entities that is a `[mentions, 1M]` float matrix
per batch (1 GB for 256 mentions) and 10 ms of arithmetic per mention, so the retriever asks
this index instead: an inverted file (faiss `IndexIVFScalarQuantizer`, 8-bit codes, inner
product = cosine on L2-normalised rows) probes `nprobe` of its `nlist` clusters, and the
candidates it returns are re-scored with the exact float32 rows (memory-mapped from the KB's
cache) and re-ordered, so every cosine a caller sees is exact; only which entities made the
list is approximate (recall against exact search: eval/results/kb_scale.md).

The index is built once into the KB's cache folder (k-means on a sample, then the rows added
in chunks with a progress bar) and read back memory-mapped where faiss can
(`IO_FLAG_MMAP`), so the workers of one machine share it.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from .errors import GenLinkerError

FAISS_VERSION = "1.15.1"
DEFAULT_NPROBE = 32
RERANK_FACTOR = 2          # ask the index for this many times k, keep the k best exact cosines
_ADD_CHUNK = 100_000


def default_nprobe() -> int:
    """Clusters probed per query: $GEN_LINKER_ANN_NPROBE, else DEFAULT_NPROBE."""
    value = os.environ.get("GEN_LINKER_ANN_NPROBE")
    return int(value) if value else DEFAULT_NPROBE


def faiss_module():
    """faiss, or an error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise GenLinkerError(
            "this KB is large enough for approximate dense retrieval, which needs faiss: "
            f"pip install 'gen-linker[scale]' (or faiss-cpu=={FAISS_VERSION})") from None
    return faiss


def default_nlist(n: int) -> int:
    """Clusters of the inverted file: about 4 sqrt(n) (4,000 at a million), faiss's advice."""
    return max(1, min(n // 39, int(4 * math.sqrt(n))))


class IVFIndex:
    """A faiss IVF index over `emb` (`[entities, dim]`, L2-normalised float32), searched with
    exact re-scoring. Build with `IVFIndex.cached` (or `build`)."""

    def __init__(self, index, emb: np.ndarray, nprobe: int = DEFAULT_NPROBE) -> None:
        self.index, self.emb = index, emb
        self.nprobe = nprobe
        self.index.nprobe = min(nprobe, index.nlist)

    @classmethod
    def build(cls, emb: np.ndarray, nlist: int | None = None, nprobe: int = DEFAULT_NPROBE, seed: int = 0,
              progress: bool = False) -> "IVFIndex":
        faiss = faiss_module()
        from tqdm.auto import tqdm

        n, dim = emb.shape
        nlist = nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        index.cp.seed = seed
        index.train(np.ascontiguousarray(emb[sample], dtype=np.float32))
        bar = tqdm(total=n, desc="ANN index", unit="entity", disable=not progress, dynamic_ncols=True)
        for lo in range(0, n, _ADD_CHUNK):
            hi = min(lo + _ADD_CHUNK, n)
            index.add(np.ascontiguousarray(emb[lo:hi], dtype=np.float32))
            bar.update(hi - lo)
        bar.close()
        return cls(index, emb, nprobe)

    @classmethod
    def cached(cls, emb: np.ndarray, cache_dir: str | Path | None, key: str, nprobe: int = DEFAULT_NPROBE,
               progress: bool = False) -> "IVFIndex":
        """The index of `emb`, read from `cache_dir` (memory-mapped) when built before, else
        built and written there. `key` names the rows (the embeddings file's digest)."""
        faiss = faiss_module()
        path = None
        if cache_dir is not None:
            digest = hashlib.sha256(f"{key}|ivf-sq8|{emb.shape}".encode()).hexdigest()[:20]
            path = Path(cache_dir) / f"ann-{digest}.faiss"
            if path.exists():
                return cls(read_index(path), emb, nprobe)
        built = cls.build(emb, nprobe=nprobe, progress=progress)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                faiss.write_index(built.index, str(tmp))
                os.replace(tmp, path)
                return cls(read_index(path), emb, nprobe)   # the mapped copy, not the private one
            except OSError:
                pass  # an unwritable cache only costs a rebuild next time
        return built

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(indices, cosines)`, each `[queries, k']` with k' = min(k, entities), best first
        (ties by index); exact cosines of the entities the index found. Where the probed
        clusters hold fewer than k' entities a row ends in index -1, cosine -inf."""
        n = self.emb.shape[0]
        k = min(k, n)
        _, found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, RERANK_FACTOR * k))
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        cos = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row, (q, hits) in enumerate(zip(queries, found)):
            hits = np.unique(hits[hits >= 0])           # sorted: the mapped rows are read in order
            sims = self.emb[hits] @ q
            order = np.lexsort((hits, -sims))[:k]
            idx[row, : len(order)] = hits[order]
            cos[row, : len(order)] = sims[order]
        return idx, cos


def read_index(path: str | Path):
    """A saved faiss index, memory-mapped read-only where the index type allows it."""
    faiss = faiss_module()
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path))

"""In-context demonstrations for the generative prompt: which training mentions to show.

Demonstrations (GEMEL): the n training mentions whose sentences are most like the query's,
by SimCSE-style dense similarity (sentence-transformers), BM25 (rank_bm25's Okapi scores as a
sparse matrix, `bm25.py`), or at random (an ablation). They are returned least to most
similar, so the closest example sits right before the query, and a pool example with the
query's exact (text, mention) is never returned.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from .bm25 import BM25Index, words
from .kb import KnowledgeBase
from .prompting import Demonstration
from .schema import Mention

RETRIEVERS = ("simcse", "bm25", "random", "none")


def demonstration_pool(mentions: Iterable[Mention], kb: KnowledgeBase) -> list[Demonstration]:
    """Training mentions with a gold entity in the KB, as demonstrations (gold name as answer)."""
    return [Demonstration(text=m.text, mention=m.mention, name=kb.get(m.gold).name, image=m.image)
            for m in mentions if m.gold is not None and m.gold in kb]


class DemoRetriever(Protocol):
    def retrieve(self, queries: Sequence[Mention], n: int) -> list[list[Demonstration]]:
        """For each query, n demonstrations ordered least to most similar."""


class _RankedRetriever:
    """Shared logic: score the pool per query, drop the query's own pair, order ascending."""

    def __init__(self, pool: Sequence[Demonstration]) -> None:
        self.pool = list(pool)
        self._pairs: dict[tuple[str, str], list[int]] = {}
        for i, d in enumerate(self.pool):
            self._pairs.setdefault((d.text, d.mention), []).append(i)

    def scores(self, queries: Sequence[Mention]) -> np.ndarray:
        raise NotImplementedError

    def retrieve(self, queries: Sequence[Mention], n: int) -> list[list[Demonstration]]:
        if n <= 0 or not self.pool or not queries:
            return [[] for _ in queries]
        sims = self.scores(queries)
        out = []
        for q, row in zip(queries, sims):
            row = row.astype(np.float64, copy=True)
            row[self._pairs.get((q.text, q.mention), [])] = -np.inf   # never the query itself
            k = min(n, int(np.isfinite(row).sum()))
            top = np.argpartition(-row, k - 1)[:k] if k else np.array([], dtype=int)
            top = top[np.lexsort((top, row[top]))]                   # ascending: closest last
            out.append([self.pool[i] for i in top])
        return out


class SimCSERetriever(_RankedRetriever):
    """Dense sentence similarity (cosine) with a sentence-transformers model; the pool's
    embeddings are cached on disk, keyed by model and pool, so a second run encodes nothing."""

    def __init__(self, pool: Sequence[Demonstration], model=None,
                 cache_dir: str | Path | None = None, batch_size: int = 128,
                 show_progress: bool = False) -> None:
        """`model`: a `SentenceEncoder` (shared with candidate retrieval) or a model name/folder."""
        super().__init__(pool)
        from .encoders import SentenceEncoder

        self.encoder = model if isinstance(model, SentenceEncoder) else SentenceEncoder(model)
        self.batch_size = batch_size
        texts = [d.text for d in self.pool]
        self.index = self.encoder.encode_cached(texts, cache_dir=cache_dir, batch_size=batch_size,
                                                show_progress=show_progress)

    def scores(self, queries: Sequence[Mention]) -> np.ndarray:
        q = self.encoder.encode([m.text for m in queries], batch_size=self.batch_size)
        return q @ self.index.T


class BM25Retriever(_RankedRetriever):
    """BM25 (Okapi, rank_bm25's scores; `bm25.BM25Index`) over the pool's sentences."""

    def __init__(self, pool: Sequence[Demonstration]) -> None:
        super().__init__(pool)
        self.bm25 = BM25Index([words(d.text) or ["_"] for d in self.pool])

    def scores(self, queries: Sequence[Mention]) -> np.ndarray:
        return self.bm25.scores([words(m.text) for m in queries])


class RandomRetriever:
    """n pool examples drawn at random, reproducibly per (seed, query id)."""

    def __init__(self, pool: Sequence[Demonstration], seed: int = 0) -> None:
        self.pool, self.seed = list(pool), seed

    def retrieve(self, queries: Sequence[Mention], n: int) -> list[list[Demonstration]]:
        out = []
        for q in queries:
            rng = random.Random(f"{self.seed}|{q.id}")
            allowed = [d for d in self.pool if (d.text, d.mention) != (q.text, q.mention)]
            out.append(rng.sample(allowed, min(n, len(allowed))))
        return out


class NoDemos:
    def retrieve(self, queries: Sequence[Mention], n: int) -> list[list[Demonstration]]:
        return [[] for _ in queries]


def make_retriever(kind: str, pool: Sequence[Demonstration], *, encoder=None,
                   seed: int = 0, show_progress: bool = False) -> DemoRetriever:
    if kind == "simcse":
        return SimCSERetriever(pool, encoder, show_progress=show_progress)
    if kind == "bm25":
        return BM25Retriever(pool)
    if kind == "random":
        return RandomRetriever(pool, seed)
    if kind == "none":
        return NoDemos()
    raise ValueError(f"unknown demonstration retriever {kind!r}: use one of {', '.join(RETRIEVERS)}")

"""Candidate entities for discriminative linking: BM25 over names and aliases, fused with dense
retrieval over name + description, by reciprocal rank fusion.

BM25 finds the entities whose names share the mention's words (most gold entities); the dense
side (sentence-transformers, the mention in its sentence against `name: description`) finds
those whose names differ from the mention but whose description fits the context. Reciprocal
rank fusion needs no score calibration between the two: an entity's fused score is
sum(1 / (rrf_k + rank)) over the lists it appears in.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .encoders import SentenceEncoder
from .errors import GenLinkerError
from .kb import KnowledgeBase
from .retrieval import name_bm25, top_indices, words
from .schema import Candidate, Mention

RRF_K = 60


def entity_text(name: str, description: str | None) -> str:
    """What the dense side (and DIM's entity tower) reads of an entity."""
    return f"{name}: {description}" if description else name


def mention_text(mention: Mention) -> str:
    """What the dense side reads of a mention: the mention, then its sentence."""
    return f"{mention.mention}: {mention.text}"


class CandidateRetriever:
    """Top-k KB entities per mention, BM25 + dense, fused. `descriptions` overrides the KB's
    (e.g. LLM-written ones from `gen-linker describe`); `encoder` is a sentence-transformers
    folder or id (default: the packaged MiniLM)."""

    def __init__(self, kb: KnowledgeBase, encoder: str | SentenceEncoder | None = None,
                 descriptions: Mapping[str, str] | None = None, depth: int = 200, rrf_k: int = RRF_K,
                 show_progress: bool = False) -> None:
        if len(kb) == 0:
            raise GenLinkerError(f"the KB {kb.source} is empty: there is nothing to retrieve")
        self.kb, self.depth, self.rrf_k, self.show_progress = kb, depth, rrf_k, show_progress
        self.ids = [e.id for e in kb]
        self.bm25 = name_bm25(kb)
        self.encoder = encoder if isinstance(encoder, SentenceEncoder) else SentenceEncoder(encoder)
        descriptions = descriptions or {}
        self.texts = [entity_text(e.name, descriptions.get(e.id, e.description)) for e in kb]
        self.entity_emb = self.encoder.encode_cached(self.texts, kb.cache_dir(), show_progress=show_progress)

    def bm25_rankings(self, mentions: Sequence[Mention]) -> list[np.ndarray]:
        """Entity indices by BM25 score of each mention's words, best first (score > 0 only)."""
        scores = self.bm25.scores([words(m.mention) for m in mentions])
        return [top_indices(row, self.depth, positive=True) for row in scores]

    def dense_rankings(self, mentions: Sequence[Mention]) -> list[np.ndarray]:
        """Entity indices by cosine to each mention in context, best first."""
        queries = self.encoder.encode([mention_text(m) for m in mentions])
        return [top_indices(row, self.depth) for row in queries @ self.entity_emb.T]

    def retrieve(self, mentions: Sequence[Mention], k: int = 100, batch_size: int = 256) -> list[list[Candidate]]:
        """The fused top-k per mention (score: the reciprocal-rank-fusion score)."""
        out: list[list[Candidate]] = []
        bar = tqdm(total=len(mentions), desc="candidates", unit="mention", disable=not self.show_progress)
        for start in range(0, len(mentions), batch_size):
            batch = mentions[start : start + batch_size]
            for lexical, dense in zip(self.bm25_rankings(batch), self.dense_rankings(batch)):
                out.append(self._fuse([lexical, dense], k))
            bar.update(len(batch))
        bar.close()
        return out

    def _fuse(self, rankings: Sequence[np.ndarray], k: int) -> list[Candidate]:
        best = reciprocal_rank_fusion([[int(i) for i in r] for r in rankings], self.rrf_k)[:k]
        return [Candidate(self.ids[i], self.kb.get(self.ids[i]).name, s) for i, s in best]


def reciprocal_rank_fusion(rankings: Sequence[Sequence], k: int = RRF_K) -> list[tuple]:
    """(item, sum of 1 / (k + rank)) over the rankings (best first, rank from 1), best first;
    ties keep the order in which items were first seen."""
    fused: dict = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda x: -x[1])


def recall_at(candidates: Sequence[Sequence[Candidate]], mentions: Sequence[Mention],
              ks: Sequence[int] = (1, 10, 100)) -> dict[int, float]:
    """Share of mentions (with a gold id) whose gold entity is among their top-k candidates."""
    pairs = [(c, m.gold) for c, m in zip(candidates, mentions) if m.gold is not None]
    if not pairs:
        return {k: 0.0 for k in ks}
    return {k: float(np.mean([gold in {c.entity_id for c in cands[:k]} for cands, gold in pairs])) for k in ks}

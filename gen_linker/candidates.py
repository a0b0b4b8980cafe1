"""Candidate generation, all of it (spaCy-style swappable generators): which KB entities a
mention may name.

- `exact_name_candidates` and `BM25NameIndex`: the mention string against names and aliases
  (the `exact` and `bm25` baselines).
- `CandidateRetriever`: BM25 over names and aliases fused with dense retrieval over name +
  description, by reciprocal rank fusion (DIM's candidates, the generative prompt's).

BM25 finds the entities whose names share the mention's words (most gold entities); the dense
side (sentence-transformers, the mention in its sentence against `name: description`) finds
those whose names differ from the mention but whose description fits the context. Reciprocal
rank fusion needs no score calibration between the two: an entity's fused score is
sum(1 / (rrf_k + rank)) over the lists it appears in.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .encoders import SentenceEncoder, text_digest
from .errors import GenLinkerError
from .kb import KnowledgeBase
from . import bm25_kernel
from .bm25 import BM25Index, top_indices, words
from .schema import Candidate, Mention

RRF_K = 60
# From this many entities dense retrieval asks an ANN index (`ann.IVFIndex`, faiss) instead of
# scoring every entity, and BM25 takes each query's top documents from the sparse product
# instead of a dense score row; below it both are exactly what they always were.
# $GEN_LINKER_EXACT_BELOW overrides it (and reaches Ray actors with the other GEN_LINKER_ settings).
EXACT_BELOW = 100_000


def ann_threshold() -> int:
    """The KB size from which retrieval is approximate: $GEN_LINKER_EXACT_BELOW, else EXACT_BELOW."""
    value = os.environ.get("GEN_LINKER_EXACT_BELOW")
    return int(value) if value else EXACT_BELOW


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
                 show_progress: bool = False, exact_below: int | None = None, nprobe: int | None = None) -> None:
        """`exact_below`: the KB size from which dense retrieval is approximate (faiss IVF,
        `nprobe` clusters probed, exact cosines re-scored) and BM25 sparse top-k (default:
        `ann_threshold()`)."""
        if len(kb) == 0:
            raise GenLinkerError(f"the KB {kb.source} is empty: there is nothing to retrieve")
        self.kb, self.depth, self.rrf_k, self.show_progress = kb, depth, rrf_k, show_progress
        self.ids = [e.id for e in kb]
        self.bm25 = name_bm25(kb)
        self.encoder = encoder if isinstance(encoder, SentenceEncoder) else SentenceEncoder(encoder)
        descriptions = descriptions or {}
        # the entity texts are needed only to find (or build) their cached embeddings: not kept,
        # since a million of them is ~250 MB in every worker process
        texts = [entity_text(e.name, descriptions.get(e.id, e.description)) for e in kb]
        self.entity_emb = self.encoder.encode_cached(texts, kb.cache_dir(), show_progress=show_progress,
                                                     mmap_mode=kb.folder is not None)
        self.ann = None
        if len(kb) >= (exact_below if exact_below is not None else ann_threshold()):
            from .ann import IVFIndex, default_nprobe

            self.ann = IVFIndex.cached(self.entity_emb, kb.cache_dir(), text_digest(texts, self.encoder.cache_key or self.encoder.path),
                                       nprobe=nprobe or default_nprobe(), progress=show_progress)

    def bm25_rankings(self, mentions: Sequence[Mention]) -> list[np.ndarray]:
        """Entity indices by BM25 score of each mention's words, best first (score > 0 only)."""
        queries = [words(m.mention) for m in mentions]
        if self.ann is not None:
            return [idx for idx, _ in self.bm25.top(queries, self.depth)]
        scores = self.bm25.scores(queries)
        return [top_indices(row, self.depth, positive=True) for row in scores]

    def dense_scores(self, mentions: Sequence[Mention]) -> np.ndarray:
        """`[mentions, entities]` cosines of each mention in context to every entity. With an
        ANN index (KBs from `exact_below`) only the index's top-`depth` entities of each
        mention have their (exact) cosine; every other entry is -inf, i.e. not retrieved, so
        that `top_indices(row, k)` for k <= depth still ranks right. `dense_top` gives the
        same without the full rows."""
        queries = self.encoder.encode([mention_text(m) for m in mentions])
        if self.ann is None:
            return queries @ self.entity_emb.T
        idx, cos = self.ann.search(queries, self.depth)
        out = np.full((len(mentions), len(self.ids)), -np.inf, dtype=np.float32)
        for row, (i, c) in enumerate(zip(idx, cos)):
            out[row, i[i >= 0]] = c[i >= 0]
        return out

    def dense_top(self, queries: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(entity indices, cosines) of each encoded query's `depth` nearest entities, best first."""
        if self.ann is None:
            out = []
            for row in queries @ self.entity_emb.T:
                top = top_indices(row, self.depth)
                out.append((top, row[top]))
            return out
        idx, cos = self.ann.search(queries, self.depth)
        return [(i[i >= 0], c[i >= 0]) for i, c in zip(idx, cos)]

    def dense_rankings(self, mentions: Sequence[Mention]) -> list[np.ndarray]:
        """Entity indices by cosine to each mention in context, best first."""
        queries = self.encoder.encode([mention_text(m) for m in mentions])
        if self.ann is not None:
            return [idx for idx, _ in self.dense_top(queries)]
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

    def retrieve_detailed(self, mentions: Sequence[Mention], k: int = 20, batch_size: int = 256):
        """The fused top-k per mention with each side's raw signals (`features.CandidateInfo`:
        BM25 score and rank, dense cosine and rank, fused rank), for learned fusion. With an
        ANN index the dense ranks come from it, and the cosine of a candidate it did not
        return (found by BM25 alone) is computed exactly from the entity's row, as below."""
        from .features import CandidateInfo

        if self.ann is not None:
            return self._retrieve_detailed_large(mentions, k, batch_size)
        out = []
        for start in range(0, len(mentions), batch_size):
            batch = mentions[start : start + batch_size]
            bm = self.bm25.scores([words(m.mention) for m in batch])
            queries = self.encoder.encode([mention_text(m) for m in batch])
            dense = queries @ self.entity_emb.T
            for b_row, d_row in zip(bm, dense):
                lexical = top_indices(b_row, self.depth, positive=True)
                semantic = top_indices(d_row, self.depth)
                b_rank = {int(i): r for r, i in enumerate(lexical, 1)}
                d_rank = {int(i): r for r, i in enumerate(semantic, 1)}
                fused = reciprocal_rank_fusion([[int(i) for i in lexical], [int(i) for i in semantic]], self.rrf_k)[:k]
                out.append([CandidateInfo(self.ids[i], bm25=float(b_row[i]) if i in b_rank else None,
                                          bm25_rank=b_rank.get(i), dense=float(d_row[i]), dense_rank=d_rank.get(i),
                                          fused_rank=r) for r, (i, _) in enumerate(fused)])
        return out

    def _retrieve_detailed_large(self, mentions: Sequence[Mention], k: int, batch_size: int):
        """`retrieve_detailed` from the sparse BM25 top and the ANN index: no `[mentions,
        entities]` matrix."""
        from .features import CandidateInfo

        out = []
        for start in range(0, len(mentions), batch_size):
            batch = mentions[start : start + batch_size]
            lexicals = self.bm25.top([words(m.mention) for m in batch], self.depth)
            queries = self.encoder.encode([mention_text(m) for m in batch])
            for q, (lexical, b_scores), (semantic, _) in zip(queries, lexicals, self.dense_top(queries)):
                b_rank = {int(i): r for r, i in enumerate(lexical, 1)}
                b_score = {int(i): float(s) for i, s in zip(lexical, b_scores)}
                d_rank = {int(i): r for r, i in enumerate(semantic, 1)}
                fused = reciprocal_rank_fusion([[int(i) for i in lexical], [int(i) for i in semantic]], self.rrf_k)[:k]
                rows = np.array([i for i, _ in fused], dtype=np.int64)
                cosines = self.entity_emb[np.sort(rows)] @ q if len(rows) else np.zeros(0, dtype=np.float32)
                cosine = dict(zip(np.sort(rows).tolist(), cosines.tolist()))
                out.append([CandidateInfo(self.ids[i], bm25=b_score.get(i), bm25_rank=b_rank.get(i),
                                          dense=float(cosine[i]), dense_rank=d_rank.get(i), fused_rank=r)
                            for r, (i, _) in enumerate(fused)])
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


# ------------------------------------------------------------------------ name candidates
def exact_name_candidates(kb: KnowledgeBase, mention: str) -> list[Candidate]:
    """Entities whose name or alias equals the mention, ignoring case; score 1.0."""
    return [Candidate(eid, kb.get(eid).name, 1.0) for eid in kb.lookup(mention)]


_OLD_BM25_FORMATS = (".npz", "-impact.npz")    # before postings by document, before impact ordering


def name_bm25(kb: KnowledgeBase) -> BM25Index:
    """BM25 over each entity's name and aliases (rows in KB order). For a KB folder the index
    is kept in its cache (`bm25-names-*.npz`) and read back memory-mapped."""
    path = None
    if kb.folder is not None:
        path = kb.cache_dir() / f"bm25-names-{kb.fingerprint}-{_alias_digest(kb)}-bydoc.npz"   # best postings first, and by document
        if path.exists():
            return BM25Index.load(path)
    index = BM25Index([words(" ".join((e.name, *e.aliases))) or ["_"] for e in kb])
    if path is not None:
        try:
            index.save(path)
        except (OSError, ValueError):
            return index  # an unwritable cache (or a hash collision) only costs a rebuild next time
        for old in _OLD_BM25_FORMATS:   # the same index in the formats of earlier versions: 55 MB each at 1M
            path.with_name(path.name.replace("-bydoc.npz", old)).unlink(missing_ok=True)
    return index



def _alias_digest(kb: KnowledgeBase) -> str:
    """The aliases are in the BM25 documents but not in the KB's fingerprint (ids + names)."""
    return text_digest(["\x1f".join(e.aliases) for e in kb])[:8]


class BM25NameIndex:
    """BM25 over each entity's name and aliases: a mention's words against the KB's names."""

    def __init__(self, kb: KnowledgeBase, exact_below: int | None = None) -> None:
        self.kb = kb
        self.ids = [e.id for e in kb]
        self.names = [e.name for e in kb]      # by row: a million-entity KB's id lookups cost more
        self.bm25 = name_bm25(kb)
        # the early-stopping top-k (numba) is the fastest at every size; without it, the
        # sparse product from `exact_below` entities and full score rows below
        self.sparse_top = bm25_kernel.enabled() or len(kb) >= (exact_below if exact_below is not None
                                                                  else ann_threshold())

    def candidates(self, mention: str, k: int = 10) -> list[Candidate]:
        return self.candidates_batch([mention], k)[0]

    def candidates_batch(self, mentions: Sequence[str], k: int = 10) -> list[list[Candidate]]:
        """`candidates` of many mentions in one sparse product: a product's fixed cost grows
        with the KB (a million entities: ~1 ms), so one per mention would dominate."""
        queries = [words(m) for m in mentions]
        if self.sparse_top:
            tops = self.bm25.top(queries, k)
        else:
            tops = []
            for row in self.bm25.scores(queries):
                idx = top_indices(row, k, positive=True)
                tops.append((idx, row[idx]))
        ids, names = self.ids, self.names
        return [[Candidate(ids[i], names[i], s) for i, s in zip(idx.tolist(), scores.tolist())]
                for idx, scores in tops]

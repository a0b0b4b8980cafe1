"""Baselines every MEL table should carry: exact name match, BM25 over names, and the
candidate retriever alone (BM25 + dense, fused). A learned linker that loses to them is a bug."""
from __future__ import annotations

from typing import Sequence

from ..candidates import BM25NameIndex, exact_name_candidates
from ..kb import KnowledgeBase
from ..schema import Candidate, LinkResult, Mention
from .base import LinkerBase


def ranked_result(mention: Mention, cands: list[Candidate], linker: str) -> LinkResult:
    """A result whose answer is the first of `cands` (NIL when there is none); its confidence is
    the answer's share of a softmax over the candidates' scores (uncalibrated)."""
    if not cands:
        return LinkResult(mention.id, None, None, None, [], linker)
    from .fused import softmax_confidence

    return LinkResult(mention.id, cands[0].entity_id, cands[0].name, cands[0].score, cands, linker,
                      confidence=softmax_confidence([c.score for c in cands]))


class ExactNameLinker(LinkerBase):
    """The entity whose name or alias equals the mention (case-insensitive), else NIL."""

    name = "exact"

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    @classmethod
    def from_spec(cls, spec, parts) -> "ExactNameLinker":
        return cls(parts.kb)

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        return [ranked_result(m, exact_name_candidates(self.kb, m.mention), self.name) for m in mentions]


class BM25NameLinker(LinkerBase):
    """Entities ranked by BM25 of the mention's words against their names and aliases."""

    name = "bm25"

    def __init__(self, kb: KnowledgeBase, top_k: int = 10) -> None:
        self.index, self.top_k = BM25NameIndex(kb), top_k

    @classmethod
    def from_spec(cls, spec, parts) -> "BM25NameLinker":
        return cls(parts.kb, top_k=spec.top_k or 10)

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        lists = self.index.candidates_batch([m.mention for m in mentions], self.top_k)
        return [ranked_result(m, cands, self.name) for m, cands in zip(mentions, lists)]


class RetrievalLinker(LinkerBase):
    """The candidate retriever alone (BM25 over names + dense over name + description, rank
    fusion): what every reranker starts from, so what it must beat."""

    name = "retrieval"

    def __init__(self, retriever, top_k: int = 10) -> None:
        self.retriever, self.top_k = retriever, top_k

    @classmethod
    def from_spec(cls, spec, parts) -> "RetrievalLinker":
        return cls(parts.retriever, top_k=spec.top_k or 10)

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        return [ranked_result(m, cands, self.name) for m, cands in zip(mentions, self.retriever.retrieve(mentions,
                                                                                                      self.top_k))]

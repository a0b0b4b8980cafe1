"""String baselines every MEL table should carry: exact name match and BM25 over names."""
from __future__ import annotations

from typing import Sequence

from ..kb import KnowledgeBase
from ..retrieval import BM25NameIndex, exact_name_candidates
from ..schema import Candidate, LinkResult, Mention


def _result(mention: Mention, cands: list[Candidate], linker: str) -> LinkResult:
    if not cands:
        return LinkResult(mention.id, None, None, None, [], linker)
    return LinkResult(mention.id, cands[0].entity_id, cands[0].name, cands[0].score, cands, linker)


class ExactNameLinker:
    """The entity whose name or alias equals the mention (case-insensitive), else NIL."""

    name = "exact"

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        return [_result(m, exact_name_candidates(self.kb, m.mention), self.name) for m in mentions]


class BM25NameLinker:
    """Entities ranked by BM25 of the mention's words against their names and aliases."""

    name = "bm25"

    def __init__(self, kb: KnowledgeBase, top_k: int = 10) -> None:
        self.index, self.top_k = BM25NameIndex(kb), top_k

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        return [_result(m, self.index.candidates(m.mention, self.top_k), self.name) for m in mentions]

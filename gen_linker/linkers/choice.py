"""`llm-choice`: the judge LLM picks the entity among the retriever's top C (UniMEL's linker).

Why: the generative linker of GEMEL writes a name with a 135M model that knows few of the KB's
entities; UniMEL's lesson is that an LLM tuned to *choose* among retrieved candidates, shown
what tells them apart, does better. Here the choice is the multiple-choice question of
`gen_linker.judge` (name, sex, life span, occupations per option), answered by the letter the
LLM gives most probability (one forward pass, no search). With `rerank.judge_adapter` (a LoRA
written by `gen-linker train --recipe adapters/wikimel-judge.yaml`) the LLM is task-tuned.

Confidence: the answer letter's probability among the C (uncalibrated).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..schema import Candidate, LinkResult, Mention
from .base import LinkerBase


class ChoiceLinker(LinkerBase):
    """The retriever's top `candidates` reordered by the judge LLM's letter log-probabilities;
    the rest of the top-k follow in the retriever's order."""

    name = "llm-choice"

    def __init__(self, retriever, judge, candidates: int = 5, top_k: int = 10,
                 descriptions: dict | None = None) -> None:
        self.retriever, self.judge = retriever, judge
        self.n_options, self.top_k, self.descriptions = candidates, top_k, descriptions
        self.kb = retriever.kb

    @classmethod
    def check_spec(cls, spec, source: str = "linker spec") -> None:
        """A judge LLM is named and fetched (checked before any model loads)."""
        from ..judge import check_judge
        from ..spec import SpecError

        if not spec.rerank.judge:
            raise SpecError(f"{source}: linker llm-choice needs rerank.judge (--judge): an instruction-tuned LLM, "
                            "e.g. qwen2.5-coder-1.5b-instruct after gen-linker get-judge")
        check_judge(spec.rerank)

    @classmethod
    def from_spec(cls, spec, parts) -> "ChoiceLinker":
        from ..judge import LLMJudge

        return cls(parts.retriever, LLMJudge.for_spec(spec), spec.rerank.judge_candidates, spec.top_k or 10,
                   parts.descriptions)

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        from ..judge import options, question

        retrieved = self.retriever.retrieve(list(mentions), max(self.top_k, self.n_options))
        asked = [(m, cands[: self.n_options]) for m, cands in zip(mentions, retrieved) if cands]
        texts = [question(m, options(self.kb, [c.entity_id for c in top], self.descriptions)) for m, top in asked]
        answers = iter(self.judge.letter_logprobs(texts, [len(top) for _, top in asked]))
        return [self._result(m, cands, next(answers)) if cands else LinkResult(m.id, None, None, None, [], self.name)
                for m, cands in zip(mentions, retrieved)]                     # no candidate: NIL

    def _result(self, mention: Mention, cands: list[Candidate], logprobs: np.ndarray) -> LinkResult:
        """The judged options by log-probability, then the rest below them in retrieval order."""
        judged = sorted(zip(cands, logprobs), key=lambda x: -x[1])
        floor = float(np.min(logprobs)) - 1.0
        ranked = [Candidate(c.entity_id, c.name, float(lp)) for c, lp in judged] + \
                 [Candidate(c.entity_id, c.name, floor - j) for j, c in enumerate(cands[len(logprobs):])]
        ranked = ranked[: self.top_k]
        best = ranked[0]
        return LinkResult(mention.id, best.entity_id, best.name, best.score, ranked, self.name,
                          confidence=float(np.exp(best.score)))


__all__ = ["ChoiceLinker"]

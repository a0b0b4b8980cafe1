"""Generative first, DIM as the fallback (the design's generative-with-fallback linker).

The generative answer stands unless it is unusable (no KB name came out: NIL), ambiguous (the
name belongs to several entities, which the trie cannot tell apart) or unsure (its score beats
the next distinct name by less than `margin` nats). Then DIM ranks the generative beams'
entities together with the retrieved candidates, and its best one is the answer. Every result
says who decided: `linker` ("generative" or "dim") and `fallback` (the reason, when DIM did).
The margin is a dev-set choice (`tune_margin`), never a test-set one.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from ..kb import KnowledgeBase
from ..schema import LinkResult, Mention
from .base import LinkerBase
from .dim import DIMLinker, check_dim_folder, fuse_rankings

NO_NAME, AMBIGUOUS, LOW_MARGIN = "no_valid_name", "ambiguous_name", "low_margin"


def name_margin(result: LinkResult) -> float:
    """Score of the best name minus that of the next distinct name (inf when there is none)."""
    scores: dict[str, float] = {}
    for c in result.candidates:
        scores.setdefault(c.name, c.score)
    ranked = sorted(scores.values(), reverse=True)
    return ranked[0] - ranked[1] if len(ranked) > 1 else math.inf


def fallback_reason(result: LinkResult, kb: KnowledgeBase, margin: float) -> str | None:
    """Why the generative answer should go to DIM, or None when it stands."""
    if result.entity_id is None or not result.candidates:
        return NO_NAME
    if len(kb.ids_for_name(result.name)) > 1:
        return AMBIGUOUS
    if name_margin(result) < margin:
        return LOW_MARGIN
    return None


class PipelineLinker(LinkerBase):
    """`generative` (any linker giving ranked named candidates) with `dim` as its fallback."""

    name = "pipeline"

    @classmethod
    def check_spec(cls, spec, source: str = "linker spec") -> None:
        check_dim_folder(spec, source)

    @classmethod
    def from_spec(cls, spec, parts) -> "PipelineLinker":
        """Generative and DIM of one spec; they share the candidate retriever (DIM's also fills
        the prompt's candidates) and the sentence encoder."""
        from .generative import GenerativeLinker

        dim = DIMLinker.from_spec(spec, parts)
        return cls(parts.kb, GenerativeLinker.from_spec(spec, parts), dim, margin=spec.pipeline.margin,
                   top_k=spec.top_k or 10)

    def __init__(self, kb: KnowledgeBase, generative, dim: DIMLinker, margin: float = 0.0,
                 num_candidates: int | None = None, top_k: int = 10) -> None:
        self.kb, self.generative, self.dim, self.margin = kb, generative, dim, margin
        self.num_candidates = num_candidates or dim.num_candidates
        self.top_k = top_k

    @property
    def batch_size(self) -> int:
        return getattr(self.generative, "batch_size", 8)

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        return self.decide(mentions, self.generative.link(mentions))

    def decide(self, mentions: Sequence[Mention], generated: Sequence[LinkResult],
               margin: float | None = None) -> list[LinkResult]:
        """Apply the fallback rules to generative results (DIM runs only where they fire)."""
        margin = self.margin if margin is None else margin
        reasons = [fallback_reason(r, self.kb, margin) for r in generated]
        out = [replace(r, linker="generative") for r in generated]
        todo = [i for i, reason in enumerate(reasons) if reason]
        for i, ranked in zip(todo, self.rerank([mentions[i] for i in todo], [generated[i] for i in todo])):
            best = ranked[0] if ranked else None
            out[i] = LinkResult(mentions[i].id, best and best.entity_id, best and best.name, best and best.score,
                                ranked[: self.top_k], "dim", fallback=reasons[i], image_error=generated[i].image_error)
        return out

    def rerank(self, mentions: Sequence[Mention], generated: Sequence[LinkResult]):
        """DIM's ranking of each mention's generative beams plus its retrieved candidates."""
        if not mentions:
            return []
        retrieved = self.dim.retriever.retrieve(mentions, self.num_candidates)
        pools = [[c.entity_id for c in g.candidates] + [c.entity_id for c in r] for g, r in zip(generated, retrieved)]
        ranked = self.dim.rank(mentions, pools)
        if self.dim.fuse_retrieval:
            ranked = [fuse_rankings(d, r) for d, r in zip(ranked, retrieved)]
        return ranked


def tune_margin(pipeline: PipelineLinker, dev: Sequence[Mention], generated: Sequence[LinkResult] | None = None,
                grid: Sequence[float] | None = None) -> tuple[float, dict[float, float]]:
    """The margin with the best dev Top-1 (ties: the smaller margin, fewer fallbacks), and the
    Top-1 of each margin tried. DIM ranks every dev mention once; margins only pick.

    The default grid spans the whole range: 0 (fall back only for the other rules), the 5th to
    95th percentiles of the dev margins, and just above the largest one (every mention whose
    beams hold a second name falls back), so a dev set where DIM is simply better can say so."""
    dev = [m for m in dev if m.gold is not None]
    generated = list(generated) if generated is not None else pipeline.generative.link(dev)
    ranked = pipeline.rerank(dev, generated)
    margins = [name_margin(r) for r in generated]
    if grid is None:
        finite = [x for x in margins if math.isfinite(x)]
        grid = [0.0]
        if finite:
            above_all = math.floor(max(finite) * 1000 + 1) / 1000      # > every finite margin
            grid = sorted({0.0, *np.quantile(finite, np.linspace(0.05, 0.95, 19)).round(3).tolist(), above_all})
    scores = {}
    for t in grid:
        hits = []
        for m, g, d in zip(dev, generated, ranked):
            use_dim = fallback_reason(g, pipeline.kb, t) is not None
            answer = (d[0].entity_id if d else None) if use_dim else g.entity_id
            hits.append(answer == m.gold)
        scores[float(t)] = float(np.mean(hits)) if hits else 0.0
    best = max(scores.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return best, scores

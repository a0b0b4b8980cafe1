"""Trained rerankers and their learned fusion: the linkers that have to beat retrieval.

- `CrossEncoderLinker` (`crossencoder`): the retriever's top-N, reordered by a trained
  cross-encoder (`gen-linker train-reranker --kind crossencoder`).
- `DenseLinker` (`dense`): dense retrieval alone with the spec's sentence encoder (a fine-tuned
  bi-encoder: `gen-linker train-reranker --kind biencoder`).
- `FusedLinker` (`fused`): the retriever's top-N candidates, each described by cheap features
  (`gen_linker.features`) and the scores of the rerankers the fusion model was trained with
  (cross-encoder, the task-tuned LLM's log-probability of each listed name, DIM), combined by
  a small model fitted on dev (`gen-linker train-fusion`) into one ranking with calibrated
  confidences; `nil_threshold` turns unsure answers into NIL. The LLM's own answer needs no
  special rule: where its log-probabilities are decisive, the fusion has learned to follow them.
  With `rerank.judge`, an instruction-tuned LLM then judges the answers the fusion is unsure of
  (`gen_linker.judge`: a multiple-choice question over its best few).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import GenLinkerError
from ..features import CandidateInfo, DemoPool, candidate_features, feature_names
from ..kb import KnowledgeBase
from ..schema import Candidate, LinkResult, Mention
from .base import LinkerBase


def softmax_confidence(scores: Sequence[float], temperature: float = 1.0) -> float | None:
    """The first score's share of a softmax over `scores` (an uncalibrated confidence)."""
    if not len(scores):
        return None
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return float(z[0] / z.sum())


class CrossEncoderLinker(LinkerBase):
    """Retrieved candidates reordered by a trained cross-encoder."""

    name = "crossencoder"

    def __init__(self, kb: KnowledgeBase, retriever, scorer, num_candidates: int = 20, top_k: int = 10) -> None:
        self.kb, self.retriever, self.scorer = kb, retriever, scorer
        self.num_candidates, self.top_k = num_candidates, top_k

    @classmethod
    def check_spec(cls, spec, source: str = "linker spec") -> None:
        from ..spec import SpecError

        if not spec.rerank.crossencoder:
            raise SpecError(f"{source}: linker 'crossencoder' needs rerank.crossencoder (--crossencoder FOLDER): "
                            "a cross-encoder trained with gen-linker train-reranker --kind crossencoder")

    @classmethod
    def from_spec(cls, spec, parts) -> "CrossEncoderLinker":
        return cls(parts.kb, parts.retriever, parts.crossencoder, spec.rerank.candidates, spec.top_k or 10)

    @property
    def batch_size(self) -> int:
        return 32

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        lists = self.retriever.retrieve(mentions, self.num_candidates)
        scores = self.scorer.score(mentions, [[c.entity_id for c in cands] for cands in lists])
        out = []
        for m, cands, s in zip(mentions, lists, scores):
            order = np.argsort(-s, kind="stable")
            ranked = [Candidate(cands[i].entity_id, cands[i].name, float(s[i])) for i in order][: self.top_k]
            out.append(_result(m, ranked, self.name, softmax_confidence([c.score for c in ranked])))
        return out


class DenseLinker(LinkerBase):
    """Entities by cosine to the mention in context, with the spec's sentence encoder."""

    name = "dense"

    def __init__(self, kb: KnowledgeBase, retriever, top_k: int = 10) -> None:
        self.kb, self.retriever, self.top_k = kb, retriever, top_k

    @classmethod
    def from_spec(cls, spec, parts) -> "DenseLinker":
        return cls(parts.kb, parts.retriever, spec.top_k or 10)

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        from ..bm25 import top_indices

        r = self.retriever
        out = []
        for m, row in zip(mentions, r.dense_scores(mentions)):
            ranked = [Candidate(r.ids[i], self.kb.get(r.ids[i]).name, float(row[i])) for i in top_indices(row, self.top_k)]
            out.append(_result(m, ranked, self.name, softmax_confidence([20 * c.score for c in ranked])))
        return out


def _result(m: Mention, ranked: list[Candidate], linker: str, confidence: float | None, image_error=None
            ) -> LinkResult:
    best = ranked[0] if ranked else None
    return LinkResult(m.id, best and best.entity_id, best and best.name, best and best.score, ranked, linker,
                      image_error=image_error, confidence=confidence)


class FusedLinker(LinkerBase):
    """Retrieval, rerankers and cheap features, fused by a model fitted on dev."""

    name = "fused"

    def __init__(self, kb: KnowledgeBase, retriever, fusion=None, crossencoder=None, llm=None, dim=None,
                 pool: DemoPool | None = None, descriptions=None, num_candidates: int = 20,
                 llm_candidates: int = 8, top_k: int = 10, rerankers: Sequence[str] | None = None,
                 judge=None, judge_settings=None) -> None:
        """`fusion` None: features only (what `train-fusion` fits on). `rerankers`: which scores
        the features hold (default: the fusion model's, else those given). `judge`: an
        `LLMJudge` for the unsure answers, with the `judge_*` values of `judge_settings` (a
        `RerankSpec`; default: the spec's defaults, chosen on dev; see `_judge`)."""
        from ..spec import RerankSpec

        self.kb, self.retriever, self.fusion = kb, retriever, fusion
        self.crossencoder, self.llm, self.dim, self.pool = crossencoder, llm, dim, pool
        self.descriptions = descriptions or {}
        self.num_candidates, self.llm_candidates, self.top_k = num_candidates, llm_candidates, top_k
        self.judge, self.judge_settings = judge, judge_settings or RerankSpec()
        given = [n for n, x in (("ce", crossencoder), ("llm", llm), ("dim", dim)) if x is not None]
        if fusion is not None:
            wanted = fusion.card.get("rerankers", [])
            missing = [n for n in wanted if n not in given]
            if missing:
                raise GenLinkerError(f"the fusion model was trained with the {', '.join(missing)} reranker(s), "
                                     "which this linker lacks: give them in the spec (rerank.crossencoder, "
                                     "rerank.llm with generative.adapter, rerank.dim with dim.folder)")
            self.rerankers = list(wanted)
            computed = feature_names(self.rerankers)
            unknown = [n for n in fusion.feature_names if n not in computed]
            if unknown:
                raise GenLinkerError(f"the fusion model reads features this version does not compute "
                                     f"({', '.join(unknown)}): retrain it with gen-linker train-fusion")
            # a model fitted before features were added reads its own columns, by name
            self.columns = None if list(fusion.feature_names) == computed else \
                [computed.index(n) for n in fusion.feature_names]
        else:
            self.rerankers = list(rerankers) if rerankers is not None else given
            self.columns = None

    @classmethod
    def check_spec(cls, spec, source: str = "linker spec") -> None:
        from ..spec import SpecError

        if not spec.rerank.fusion:
            raise SpecError(f"{source}: linker 'fused' needs rerank.fusion (--fusion FOLDER): a fusion model trained "
                            "with gen-linker train-fusion")
        if spec.rerank.judge:                      # a judge not fetched yet fails before anything loads
            from ..judge import check_judge

            check_judge(spec.rerank)

    @classmethod
    def from_spec(cls, spec, parts, fusion=None, rerankers: Sequence[str] | None = None) -> "FusedLinker":
        """The fused linker of a spec; `fusion` (a model, or None to read `rerank.fusion`) and
        `rerankers` serve `train-fusion`, which builds it before a fusion exists."""
        from ..fusion import FusionModel

        r = spec.rerank
        if fusion is None and r.fusion:
            fusion = FusionModel.load(r.fusion)
        wanted = fusion.card.get("rerankers", []) if fusion is not None else list(rerankers or ())
        ce = parts.crossencoder if "ce" in wanted else None
        llm = dim = None
        if "llm" in wanted:
            from .generative import GenerativeLinker

            llm = GenerativeLinker.from_spec(spec, parts)
        if "dim" in wanted:
            from .dim import DIMLinker

            if not spec.dim.folder:
                raise GenLinkerError("the fusion uses DIM scores: give dim.folder (--dim FOLDER)")
            dim = DIMLinker.from_spec(spec, parts)
        judge = None
        if r.judge and fusion is not None:
            from ..judge import LLMJudge

            judge = LLMJudge.for_spec(spec)
        return cls(parts.kb, parts.retriever, fusion, ce, llm, dim, parts.pool, parts.descriptions,
                   r.candidates, r.llm_candidates, spec.top_k or 10, wanted, judge, r)

    @property
    def batch_size(self) -> int:
        return getattr(self.llm, "batch_size", 16) if self.llm is not None else 32

    # ------------------------------------------------------------------ features
    def candidates(self, mentions: Sequence[Mention]) -> list[list[CandidateInfo]]:
        """The retrieved candidates with every reranker's score filled in."""
        infos = self.retriever.retrieve_detailed(mentions, self.num_candidates)
        if self.crossencoder is not None:
            for cands, s in zip(infos, self.crossencoder.score(mentions, [[c.entity_id for c in cs] for cs in infos])):
                for c, v in zip(cands, s):
                    c.scores["ce"] = float(v)
        if self.dim is not None:
            ranked = self.dim.rank(mentions, [[c.entity_id for c in cs] for cs in infos])
            for cands, r in zip(infos, ranked):
                by_id = {c.entity_id: c.score for c in r}
                for c in cands:
                    if c.entity_id in by_id:
                        c.scores["dim"] = by_id[c.entity_id]
        if self.llm is not None:
            self._llm_scores(mentions, infos)
        return infos

    def _llm_scores(self, mentions: Sequence[Mention], infos: list[list[CandidateInfo]]) -> None:
        """The LLM's log-probability of each of the best `llm_candidates` names (by the
        cross-encoder where there is one, else by retrieval), listed in its prompt."""
        lists = []
        for cands in infos:
            order = sorted(cands, key=lambda c: -c.scores.get("ce", -c.fused_rank)) if "ce" in self.rerankers \
                else list(cands)
            names: dict[str, str | None] = {}
            for c in order:
                name = self.kb.get(c.entity_id).name
                if name not in names and len(names) < self.llm_candidates:
                    names[name] = self.llm.description(c.entity_id)
            lists.append(list(names.items()))
        for cands, scores in zip(infos, self.llm.score_candidates(mentions, lists)):
            for c in cands:
                name = self.kb.get(c.entity_id).name
                if name in scores:
                    c.scores["llm"] = scores[name]

    def features(self, mentions: Sequence[Mention]) -> tuple[list[list[CandidateInfo]], list[np.ndarray]]:
        """Each mention's candidates and their feature matrix: the columns the fusion model reads
        (in its order), or every feature of this version when there is no model yet."""
        infos = self.candidates(mentions)
        knn = self.pool.knn(mentions) if self.pool is not None else [None] * len(mentions)
        feats = [candidate_features(m, cands, self.kb, self.descriptions, self.pool, k, self.rerankers)
                 for m, cands, k in zip(mentions, infos, knn)]
        if self.columns is not None:
            feats = [x[:, self.columns] for x in feats]
        return infos, feats

    # ------------------------------------------------------------------ linking
    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        if self.fusion is None:
            raise GenLinkerError("this fused linker has no fusion model yet: train one with gen-linker train-fusion")
        infos, feats = self.features(mentions)
        ranked: list[list[tuple[str, float]]] = []
        confidences: list[float | None] = []
        probabilities: list[np.ndarray] = []            # calibrated, in ranked order (the rest is NIL's)
        for cands, x in zip(infos, feats):
            scores = self.fusion.scores(x)
            conf = self.fusion.confidences(scores)
            order = np.argsort(-scores, kind="stable")
            ranked.append([(cands[i].entity_id, float(scores[i])) for i in order])
            confidences.append(float(conf[order[0]]) if len(order) else None)
            probabilities.append(conf[order])
        if self.judge is not None:
            self._judge(mentions, ranked, confidences, probabilities)
        out = []
        for m, best, confidence in zip(mentions, ranked, confidences):
            listed = [Candidate(e, self.kb.get(e).name, s) for e, s in best[: self.top_k]]
            image_error = self.dim.featurizer.image_errors.get(str(m.image)) if self.dim is not None and m.image \
                else None
            out.append(_result(m, listed, self.name, confidence, image_error))
        return out

    def _judge(self, mentions: Sequence[Mention], ranked: list[list[tuple[str, float]]],
               confidences: list[float | None], probabilities: list[np.ndarray]) -> None:
        """Re-rank, in place, the unsure answers' best `judge_candidates` by the fusion's
        log-probability plus `judge_weight` x the LLM judge's (`gen_linker.judge`); their
        confidence becomes the winner's share among the judged (at the temperature fitted on dev)
        times the fusion's probability of the judged candidates (not NIL, not the rest).
        Confident answers stay."""
        from ..judge import combine, judged_confidence, options, question

        cfg = self.judge_settings
        unsure = [i for i, c in enumerate(confidences) if c is not None and c < cfg.judge_below and len(ranked[i]) > 1]
        if not unsure:
            return
        tops = [[e for e, _ in ranked[i][: cfg.judge_candidates]] for i in unsure]
        questions = [question(mentions[i], options(self.kb, top, self.descriptions)) for i, top in zip(unsure, tops)]
        for i, logprobs in zip(unsure, self.judge.letter_logprobs(questions, [len(top) for top in tops])):
            top, rest = ranked[i][: len(logprobs)], ranked[i][len(logprobs):]
            raw = np.array([s for _, s in top])
            new = combine(raw, logprobs, cfg.judge_weight)
            floor = float(np.logaddexp.reduce(raw)) - cfg.judge_weight * float(logprobs.min())  # below every judged one
            order = np.argsort(-new, kind="stable")
            ranked[i] = [(top[j][0], float(new[j])) for j in order] + [(e, s - floor) for e, s in rest]
            confidences[i] = judged_confidence(new, cfg.judge_temperature, float(probabilities[i][: len(logprobs)].sum()))


def nil_below(result: LinkResult, threshold: float) -> LinkResult:
    """The result with its answer turned into NIL when its confidence is below `threshold`
    (the ranked candidates stay, for inspection)."""
    if result.entity_id is None or result.confidence is None or result.confidence >= threshold:
        return result
    from dataclasses import replace

    return replace(result, entity_id=None, name=None, score=None)


__all__ = ["CrossEncoderLinker", "DenseLinker", "FusedLinker", "nil_below", "softmax_confidence", "spec_rerankers"]


def spec_rerankers(spec) -> list[str]:
    """The reranker scores a fusion fitted for `spec` reads (rerank.crossencoder / rerank.llm /
    rerank.dim), in feature order."""
    r = spec.rerank
    return [n for n, on in (("ce", bool(r.crossencoder)), ("llm", r.llm), ("dim", r.dim)) if on]


def train_fusion(spec, kb: KnowledgeBase, dev: Sequence[Mention], output, config=None, progress: bool = True,
                 chunk: int = 64, pool: Sequence[Mention] | None = None):
    """Fit the fusion of `spec`'s rerankers (rerank.crossencoder / rerank.llm / rerank.dim) on
    dev mentions only, and save it to `output`; (model, report). The dev mentions must have gold
    ids; the model's card records how many it read and which rerankers it expects. `pool`: the
    labelled mentions the pool features count (default: the spec's demonstrations)."""
    from pathlib import Path

    from ..fusion import FusionConfig, fit
    from ..loader import LinkerParts, check_spec

    r = spec.rerank
    wanted = spec_rerankers(spec)
    check_spec(spec.merged({"linker": "retrieval"}), "train-fusion")
    parts = LinkerParts(kb, spec, n_mentions=len(dev), progress=progress)
    if pool is not None:
        parts.pool = DemoPool([m for m in pool if m.gold in kb], parts.similarity_encoder)
    linker = FusedLinker.from_spec(spec, parts, fusion=None, rerankers=wanted)
    dev = [m for m in dev if m.gold is not None]
    if not dev:
        raise GenLinkerError("train-fusion needs dev mentions with gold entity ids")
    examples = fusion_examples(linker, dev, chunk, progress)
    model, report = fit(examples, feature_names(wanted), config or FusionConfig())
    model.card.update({"rerankers": wanted, "candidates": r.candidates, "llm_candidates": r.llm_candidates})
    model.save(Path(output))
    return model, report


def fusion_examples(linker: FusedLinker, mentions: Sequence[Mention], chunk: int = 64, progress: bool = True,
                    desc: str = "fusion features (dev)") -> list:
    """Each labelled mention's candidate features and the gold's position among them (None:
    retrieval missed it), computed in chunks: what a fusion is fitted or scored on."""
    from tqdm import tqdm

    from ..fusion import FusionExample

    examples = []
    for start in tqdm(range(0, len(mentions), chunk), desc=desc, unit="chunk", disable=not progress):
        batch = mentions[start : start + chunk]
        infos, feats = linker.features(batch)
        for m, cands, x in zip(batch, infos, feats):
            ids = [c.entity_id for c in cands]
            examples.append(FusionExample(x, ids.index(m.gold) if m.gold in ids else None, m.id))
    return examples

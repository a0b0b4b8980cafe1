"""Metrics: Top-k accuracy (Hits@k over the returned candidates) and MRR against gold ids.

Every gold mention counts in the denominator: a NIL answer, an error record or a missing
prediction is a miss, so a linker cannot look better by failing on hard inputs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import GenLinkerError

KS = (1, 5, 10)


@dataclass
class Scores:
    mentions: int
    top1: float
    top5: float
    top10: float
    mrr: float
    nil: int
    errors: int
    missing: int

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        return (f"mentions {self.mentions}  Top-1 {self.top1:.4f}  Top-5 {self.top5:.4f}  "
                f"Top-10 {self.top10:.4f}  MRR {self.mrr:.4f}  NIL {self.nil}  errors {self.errors}  "
                f"missing {self.missing}")


def gold_rank(record: Mapping, gold: str) -> int | None:
    """1-based rank of the gold id among the record's distinct candidate ids, or None."""
    seen: list[str] = []
    for c in record.get("candidates") or []:
        if c["entity_id"] not in seen:
            seen.append(c["entity_id"])
    if not seen and record.get("entity_id"):
        seen = [record["entity_id"]]
    return seen.index(gold) + 1 if gold in seen else None


def score(predictions: Mapping[str, Mapping], gold: Mapping[str, str]) -> Scores:
    """Scores of `predictions` (id -> output record) against `gold` (id -> entity id)."""
    if not gold:
        raise GenLinkerError("no gold entity ids to score against: do the mentions have \"gold\"?")
    hits = {k: 0 for k in KS}
    rr = 0.0
    nil = errors = missing = 0
    for mid, gid in gold.items():
        rec = predictions.get(mid)
        if rec is None:
            missing += 1
            continue
        if "error" in rec:
            errors += 1
            continue
        if rec.get("entity_id") is None:
            nil += 1
        rank = gold_rank(rec, gid)
        if rank is not None:
            rr += 1.0 / rank
            for k in KS:
                hits[k] += rank <= k
    n = len(gold)
    return Scores(n, hits[1] / n, hits[5] / n, hits[10] / n, rr / n, nil, errors, missing)


def read_predictions(path: str | Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                out[str(rec["id"])] = rec
            except (ValueError, KeyError, TypeError):
                raise GenLinkerError(f"{path}:{lineno}: not a gen-linker output record") from None
    return out


def top1(results: Iterable, mentions: Iterable) -> float:
    """The share of `mentions` whose result (same order) names their gold entity; 0 for none."""
    hits = [r.entity_id == m.gold for r, m in zip(results, mentions)]
    return sum(hits) / len(hits) if hits else 0.0


def gold_of(mentions: Iterable) -> dict[str, str]:
    """id -> gold entity id of the mentions that have one (error records are skipped)."""
    return {m.id: m.gold for m in mentions if getattr(m, "gold", None) is not None}

"""Per-candidate features for learned fusion: everything cheap that says "this mention names
this entity", beside the scores of the trained rerankers.

A mention's candidate list becomes a `[candidates, features]` matrix. The features are the
kinds the fusion issue lists, each normalised within the list where a raw score has no fixed
scale:

- retrieval: BM25 over names (score relative to the list's best, reciprocal rank, tied with the
  best), dense cosine (relative, reciprocal rank), the fused rank;
- strings: the mention equals the name / an alias, all its words are in the name, it is the
  name's last word, how much of the name the sentence contains, name length;
- descriptions (Wikidata-style `Sex: ... Birth: 1885 ... Death: 1978`, as WikiMEL's; absent
  fields give 0): years in the sentence against the entity's life span (within it allowing for
  posthumous depictions; alive in every year; years after the death), gender cues against
  `Sex`, words shared by sentence and description, description length (a popularity proxy);
- the demonstration pool (the labelled examples given at link time: the training set, or a new
  KB's few examples): how often the entity is a gold answer there, the share of the mention's
  surface form that links to it, and the nearest pool sentence labelled with it (kNN);
- reranker scores (cross-encoder, LLM log-probability, DIM), relative to the list's best, with
  an indicator where a reranker did not score the candidate.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .bm25 import words
from .kb import KnowledgeBase
from .schema import Mention

BASE_FEATURES = (
    "bm25_rel", "bm25_rrank", "bm25_top", "dense_rel", "dense_rrank", "fused_rrank",
    "exact", "alias", "mention_in_name", "last_word", "name_in_text", "name_words",
    "year_fit", "year_miss", "alive", "after_death", "gender", "desc_overlap", "desc_len",
    "pool_count", "pool_surface", "pool_knn",
)
RERANKERS = ("ce", "llm", "dim")

_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-3][0-9])s?\b")
_BIRTH = re.compile(r"Birth:\s*(\d{3,4})")
_DEATH = re.compile(r"Death:\s*(\d{3,4})")
_SEX = re.compile(r"Sex:\s*(male|female)", re.IGNORECASE)
_NICK = re.compile(r"Nick name:\s*([^.]+)")
_FEMALE = {"she", "her", "hers", "herself", "woman", "women", "queen", "princess", "actress", "mrs", "miss",
           "ms", "lady", "wife", "mother", "daughter", "sister", "girl", "duchess", "empress", "countess"}
_MALE = {"he", "his", "him", "himself", "man", "men", "king", "prince", "mr", "sir", "lord", "husband", "father",
         "son", "brother", "boy", "duke", "emperor", "count"}
_STOP = {"the", "and", "from", "with", "for", "that", "this", "into", "during", "after", "before", "about",
         "their", "there", "where", "which", "while", "when", "being", "were", "was", "has", "have", "had"}


@dataclass
class CandidateInfo:
    """One retrieved candidate with the retriever's raw signals (None: not retrieved that way)."""

    entity_id: str
    bm25: float | None = None
    bm25_rank: int | None = None
    dense: float | None = None
    dense_rank: int | None = None
    fused_rank: int = 0
    scores: dict[str, float] = field(default_factory=dict)    # reranker name -> score


class DemoPool:
    """What the labelled examples at hand say about entities: gold counts, surface -> entity
    counts, and (with an encoder) their sentence embeddings for kNN."""

    def __init__(self, mentions: Sequence[Mention], encoder=None, neighbours: int = 32,
                 leave_one_out: bool = False) -> None:
        """`leave_one_out`: a mention that is itself in the pool does not count its own label
        (fitting a fusion on the pool's own examples, as `gen-linker adapt` does)."""
        self.mentions = [m for m in mentions if m.gold is not None]
        self.own: dict[tuple[str, str], Counter] = defaultdict(Counter)
        if leave_one_out:
            for m in self.mentions:
                self.own[(m.text, m.mention)][m.gold] += 1
        self.count = Counter(m.gold for m in self.mentions)
        self.surface: dict[str, Counter] = defaultdict(Counter)
        for m in self.mentions:
            self.surface[m.mention.lower()][m.gold] += 1
        self.encoder, self.neighbours = encoder, neighbours
        self.golds = np.array([m.gold for m in self.mentions], dtype=object)
        self.keys = [(m.text, m.mention) for m in self.mentions]
        self.emb = None
        if encoder is not None and self.mentions:
            self.emb = encoder.encode_cached([m.text for m in self.mentions])

    def knn(self, mentions: Sequence[Mention]) -> list[dict[str, float]]:
        """Per mention: entity -> the highest cosine of a pool sentence labelled with it, among
        the nearest `neighbours` (the mention itself, if in the pool, excluded)."""
        if self.emb is None or not len(self.golds):
            return [{} for _ in mentions]
        q = self.encoder.encode([m.text for m in mentions])
        sims = q @ self.emb.T
        out = []
        for m, row in zip(mentions, sims):
            k = min(self.neighbours, len(row))
            top = np.argpartition(-row, k - 1)[:k]
            best: dict[str, float] = {}
            for i in top:
                if self.keys[i] == (m.text, m.mention):
                    continue
                g = self.golds[i]
                best[g] = max(best.get(g, -1.0), float(row[i]))
            out.append(best)
        return out


def _years(text: str) -> list[int]:
    return [int(y) for y in _YEAR.findall(text)]


def _life(description: str | None) -> tuple[int | None, int | None]:
    if not description:
        return None, None
    b, d = _BIRTH.search(description), _DEATH.search(description)
    return (int(b.group(1)) if b else None), (int(d.group(1)) if d else None)


def year_fit(text_years: Sequence[int], birth: int | None, death: int | None) -> tuple[float, float]:
    """(fit, missing): fit in [-1, 1] says how well the sentence's years sit in the entity's
    lifetime (+1 all inside [birth, death + 50], falling off by decades outside); missing = 1
    when either side has no year."""
    if not text_years or birth is None:
        return 0.0, 1.0
    end = (death if death is not None else 2030) + 50       # posthumous depictions, statues, stamps
    gaps = [max(0, birth - y, y - end) for y in text_years]
    return float(max(-1.0, 1.0 - min(gaps) / 20.0) if min(gaps) else 1.0), 0.0


def life_cues(text_years: Sequence[int], birth: int | None, death: int | None) -> tuple[float, float]:
    """(alive, after_death): 1 when the entity was alive (and at least 5) in every year the
    sentence names; the years from its death to the sentence's earliest year (/50, at most 1).
    Why beside `year_fit`: that one forgives 50 years after a death (statues, stamps), but a
    caption such as "Lennon performing ... in 2013" names the living (WikiMEL's errors are mostly
    surnames in captions like it). Both 0 without a year or a birth."""
    if not text_years or birth is None:
        return 0.0, 0.0
    alive = float(all(birth + 5 <= y <= (death if death is not None else 2030) for y in text_years))
    after = max(0, min(text_years) - death) if death is not None else 0
    return alive, min(after, 50) / 50.0


def _gender_cue(text: str) -> int:
    ws = set(words(text))
    f, m = len(ws & _FEMALE), len(ws & _MALE)
    return (f > m) - (m > f)                                  # +1 female, -1 male, 0 none


def _content(text: str) -> set[str]:
    return {w for w in words(text) if len(w) >= 4 and w not in _STOP and not w.isdigit()}


def candidate_features(mention: Mention, cands: Sequence[CandidateInfo], kb: KnowledgeBase,
                       descriptions: Mapping[str, str] | None = None, pool: DemoPool | None = None,
                       knn: Mapping[str, float] | None = None,
                       rerankers: Sequence[str] = ()) -> np.ndarray:
    """The `[len(cands), n_features(rerankers)]` feature matrix of one mention's candidates."""
    descriptions = descriptions or {}
    text_words = words(mention.text)
    text_prefixes = {w[:5] for w in text_words}
    mention_words = words(mention.mention)
    mention_low = mention.mention.lower().strip()
    text_years = _years(mention.text)
    cue = _gender_cue(mention.text)
    text_content = _content(mention.text) - set(mention_words)
    surface = pool.surface.get(mention_low) if pool is not None else None
    own = pool.own.get((mention.text, mention.mention)) if pool is not None else None
    if own and surface:
        surface = surface - own
    surface_total = sum(surface.values()) if surface else 0
    bm_best = max((c.bm25 for c in cands if c.bm25 is not None), default=None)
    de_best = max((c.dense for c in cands if c.dense is not None), default=None)
    rows = []
    for c in cands:
        ent = kb.get(c.entity_id)
        desc = descriptions.get(ent.id, ent.description) or ""
        name_words = words(ent.name)
        aliases = {a.lower() for a in ent.aliases}
        nick = _NICK.search(desc)
        if nick:
            aliases |= {n.strip().lower() for n in nick.group(1).split(",")}
        birth, death = _life(desc)
        fit, miss = year_fit(text_years, birth, death)
        alive, after_death = life_cues(text_years, birth, death)
        sex = _SEX.search(desc)
        gender = 0.0
        if sex and cue:
            gender = 1.0 if (sex.group(1).lower() == "female") == (cue > 0) else -1.0
        desc_words = _content(desc)
        row = [
            (c.bm25 / bm_best) if c.bm25 is not None and bm_best else 0.0,
            1.0 / c.bm25_rank if c.bm25_rank else 0.0,
            float(c.bm25 is not None and bm_best is not None and c.bm25 >= bm_best - 1e-9),
            (c.dense - de_best) if c.dense is not None and de_best is not None else -1.0,
            1.0 / c.dense_rank if c.dense_rank else 0.0,
            1.0 / (1 + c.fused_rank),
            float(ent.name.lower() == mention_low),
            float(mention_low in aliases),
            float(bool(mention_words) and all(w in name_words for w in mention_words)),
            float(bool(mention_words) and bool(name_words) and mention_words[-1] == name_words[-1]),
            (sum(w[:5] in text_prefixes for w in name_words) / len(name_words)) if name_words else 0.0,
            min(len(name_words), 6) / 6.0,
            fit, miss, alive, after_death, gender,
            min(len(desc_words & text_content), 5) / 5.0,
            math.log1p(len(desc.split())) / 5.0,
            math.log1p(pool.count.get(ent.id, 0) - (own or {}).get(ent.id, 0)) if pool is not None else 0.0,
            (surface[ent.id] / surface_total) if surface_total else 0.0,
            (knn or {}).get(ent.id, 0.0),
        ]
        rows.append(row)
    base = np.asarray(rows, dtype=np.float32).reshape(len(cands), len(BASE_FEATURES))
    return np.concatenate([base, reranker_columns(cands, rerankers)], axis=1)


def reranker_columns(cands: Sequence[CandidateInfo], rerankers: Sequence[str]) -> np.ndarray:
    """Per reranker: its score minus the list's best (0 for the best), the softmax share of the
    candidate within the list, and 1 where the reranker did not score the candidate."""
    cols = []
    for name in rerankers:
        raw = np.array([c.scores.get(name, np.nan) for c in cands], dtype=np.float64)
        have = ~np.isnan(raw)
        rel, share = np.full(len(cands), -10.0), np.zeros(len(cands))
        if have.any():
            best = raw[have].max()
            rel[have] = np.maximum(raw[have] - best, -10.0)
            e = np.exp(raw[have] - best)
            share[have] = e / e.sum()
        cols += [rel, share, (~have).astype(np.float64)]
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(cands), 0), dtype=np.float32)


def feature_names(rerankers: Sequence[str] = ()) -> list[str]:
    return list(BASE_FEATURES) + [f"{r}_{k}" for r in rerankers for k in ("rel", "share", "missing")]

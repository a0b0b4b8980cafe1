"""Trie-constrained beam search bookkeeping, shared by every backend.

A backend only has to answer "the log-probabilities of these allowed tokens after each live
beam"; this class decides which beams live on, which names are finished, and when to stop.
Each prompt may have its own trie (e.g. its own candidates' names): `tries` is one trie for
the whole batch or one per prompt. Scores are summed token log-probabilities. Because every
extension lowers a score, a prompt is done as soon as it has `top_k` finished names and no live
beam scores above the k-th of them: the early stop loses nothing that longer search would have
found among kept beams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .trie import ROOT, Tries, per_prompt


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam: the name's index in the trie's build list, its tokens (with the end
    token) and its score, the summed log-probability of those tokens (not length-normalised:
    every name ends with the same end token, and an unnormalised sum makes the early stop exact)."""

    value: int
    tokens: tuple[int, ...]
    score: float


@dataclass
class _Beam:
    owner: int                 # which prompt of the batch
    state: int                 # trie node
    tokens: tuple[int, ...]
    score: float


class ConstrainedBeams:
    """Live beams of a batch of prompts. Row r of the backend's batch is `self.live[r]`."""

    def __init__(self, tries: Tries, n_prompts: int, num_beams: int, top_k: int | None = None) -> None:
        if num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        self.tries, self.num_beams = per_prompt(tries, n_prompts), num_beams
        self.top_k = top_k or num_beams
        self.live = [_Beam(i, ROOT, (), 0.0) for i in range(n_prompts)]
        self.finished: list[list[Hypothesis]] = [[] for _ in range(n_prompts)]

    @property
    def done(self) -> bool:
        return not self.live

    def allowed(self) -> list[np.ndarray]:
        """For each live row, the token ids the trie allows next (never empty)."""
        return [self.tries[b.owner].allowed(b.state) for b in self.live]

    def advance(self, logprobs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Extend beams given, per live row, the log-probs of `allowed()[row]` (same order).

        A log-prob of -inf marks a token that is never taken (a backend may send only the
        tokens that can matter: each parent's best `num_beams` and its end token).
        Returns (parent_rows, new_tokens) of the new live beams, in row order: the backend
        reorders its KV cache by `parent_rows` and feeds `new_tokens` next.
        """
        by_owner: dict[int, list[tuple[float, int, int, int]]] = {}
        for row, (beam, lp) in enumerate(zip(self.live, logprobs)):
            toks, nodes = self.tries[beam.owner].children(beam.state)
            scores = beam.score + np.asarray(lp, dtype=np.float64)
            bucket = by_owner.setdefault(beam.owner, [])
            bucket.extend(zip(scores.tolist(), [row] * len(toks), toks.tolist(), nodes.tolist()))

        new_live: list[_Beam] = []
        parents: list[int] = []
        for owner, cands in by_owner.items():
            cands.sort(key=lambda c: -c[0])
            kept = 0
            for score, row, tok, state in cands:
                if score == float("-inf"):
                    break
                if kept >= self.num_beams and not self._could_finish(owner, score):
                    break
                parent, trie = self.live[row], self.tries[owner]
                if tok == trie.end_token:
                    self._finish(owner, Hypothesis(trie.value(state), parent.tokens + (tok,), score))
                elif kept < self.num_beams:
                    new_live.append(_Beam(owner, state, parent.tokens + (tok,), score))
                    parents.append(row)
                    kept += 1
        # Drop the beams of prompts that cannot improve their top-k any more.
        keep = [i for i, b in enumerate(new_live) if self._could_finish(b.owner, b.score)]
        self.live = [new_live[i] for i in keep]
        parent_rows = np.array([parents[i] for i in keep], dtype=np.int64)
        new_tokens = np.array([b.tokens[-1] for b in self.live], dtype=np.int64)
        return parent_rows, new_tokens

    def _could_finish(self, owner: int, score: float) -> bool:
        done = self.finished[owner]
        return len(done) < self.top_k or score > done[-1].score

    def _finish(self, owner: int, hyp: Hypothesis) -> None:
        if hyp.value < 0 or not self._could_finish(owner, hyp.score):
            return
        done = self.finished[owner]
        done.append(hyp)
        done.sort(key=lambda h: -h.score)
        del done[self.top_k:]

    def results(self) -> list[list[Hypothesis]]:
        return [list(h) for h in self.finished]

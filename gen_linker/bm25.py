"""Okapi BM25 as one sparse matrix: the scores of rank_bm25's `BM25Okapi`, for a batch of
queries at once.

rank_bm25 scores a query with a Python loop over every document for every query word (about
50 queries/s over an 18,880-entity KB here), the slowest step of candidate retrieval and of
DIM's hard negatives. Every document's weight for a word depends only on that document and
word, so the weights are stored once in a sparse (documents x words) matrix and a batch of
queries (word counts) is one sparse product. Same formula and constants as `BM25Okapi`
(k1 1.5, b 0.75, idf floored at epsilon x the average idf), so the scores agree with
rank_bm25's to rounding (tested).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from scipy import sparse


class BM25Index:
    """BM25 over tokenized documents; `scores(queries)` is `[len(queries), len(documents)]`."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75,
                 epsilon: float = 0.25) -> None:
        if not documents:
            raise ValueError("BM25 needs at least one document")
        self.vocab: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        doc_len = np.array([len(d) for d in documents], dtype=np.float64)
        for row, doc in enumerate(documents):
            for word, tf in Counter(doc).items():
                rows.append(row)
                cols.append(self.vocab.setdefault(word, len(self.vocab)))
                tfs.append(tf)
        rows, cols, tfs = np.array(rows), np.array(cols), np.array(tfs, dtype=np.float64)
        idf = self._idf(np.bincount(cols, minlength=len(self.vocab)), len(documents), epsilon)
        norm = k1 * (1 - b + b * doc_len / doc_len.mean())
        weights = idf[cols] * (tfs * (k1 + 1) / (tfs + norm[rows]))
        # words x documents, so that a query batch (queries x words) times it is the score matrix
        self.weights = sparse.csr_matrix((weights, (cols, rows)), shape=(len(self.vocab), len(documents)))

    @staticmethod
    def _idf(doc_freq: np.ndarray, n_docs: int, epsilon: float) -> np.ndarray:
        """rank_bm25's idf: log((N - n + 0.5) / (n + 0.5)), negatives set to epsilon x the mean."""
        idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
        idf[idf < 0] = epsilon * idf.mean() if len(idf) else 0.0
        return idf

    def scores(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        """BM25 score of every document for each query (a query word counts as often as it
        occurs; unknown words score nothing)."""
        rows, cols, counts = [], [], []
        for row, query in enumerate(queries):
            for word, n in Counter(w for w in query if w in self.vocab).items():
                rows.append(row)
                cols.append(self.vocab[word])
                counts.append(n)
        q = sparse.csr_matrix((np.array(counts, dtype=np.float64), (rows, cols)),
                              shape=(len(queries), len(self.vocab)))
        return (q @ self.weights).toarray()

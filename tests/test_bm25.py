"""The sparse BM25 index against rank_bm25's BM25Okapi, the reference it reimplements."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gen_linker import bm25_kernel
from gen_linker.bm25 import BM25Index

rank_bm25 = pytest.importorskip("rank_bm25")

WORDS = st.sampled_from(["paris", "hilton", "noel", "harrison", "francis", "drake", "the", "of", "bucks"])


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(WORDS, min_size=1, max_size=6), min_size=1, max_size=25),
       queries=st.lists(st.lists(WORDS | st.just("unknown"), max_size=5), min_size=1, max_size=4))
def test_scores_equal_rank_bm25(docs, queries):
    """Same scores for every document and query, including repeated query words, words in
    more than half of the documents (floored idf) and words no document has."""
    ref = rank_bm25.BM25Okapi(docs)
    got = BM25Index(docs).scores(queries)
    assert got.shape == (len(queries), len(docs))
    if ref.average_idf <= 0:        # the one deliberate difference: see test_tiny_corpus_still_scores_matches
        return
    for row, q in zip(got, queries):
        np.testing.assert_allclose(row, ref.get_scores(q), rtol=1e-12, atol=1e-12)


def test_tiny_corpus_still_scores_matches():
    """Where every word is in most documents, rank_bm25's idf floor (epsilon x a mean idf that
    is negative) scores matches below zero; here a match still scores above a non-match."""
    docs = [["charles", "bukowski"], ["charles", "darwin"], ["bukowski", "band"]]
    assert rank_bm25.BM25Okapi(docs).get_scores(["charles", "bukowski"])[0] <= 0
    scores = BM25Index(docs).scores([["charles", "bukowski"], ["nobody"]])
    assert scores[0, 0] > scores[0, 1] > 0 and scores[0, 0] > scores[0, 2] > 0 and not scores[1].any()


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="at least one document"):
        BM25Index([])


def _dense_top(index, queries, k):
    """The definition of `top`: the k best positive scores of the full score matrix, ties by index."""
    from gen_linker.bm25 import top_indices

    out = []
    for row in index.scores(queries):
        idx = top_indices(row, k, positive=True)
        out.append((idx, row[idx]))
    return out


def _assert_same_tops(got, want):
    assert len(got) == len(want)
    for (gi, gs), (wi, ws) in zip(got, want):
        assert gi.tolist() == wi.tolist()
        assert gs.tolist() == ws.tolist()        # bit-identical, not merely close


@settings(max_examples=80, deadline=None)
@given(docs=st.lists(st.lists(WORDS, min_size=1, max_size=5), min_size=1, max_size=40),
       queries=st.lists(st.lists(WORDS | st.just("unknown"), max_size=8), min_size=1, max_size=5),
       k=st.integers(1, 12))
def test_top_is_the_exact_top_k(docs, queries, k, tmp_path_factory):
    """The early-stopping top-k (impact-ordered postings) returns exactly the k best documents
    of the full score matrix, ties by index, with the product's scores to the bit; also from an
    index saved and memory-mapped, and from one saved before postings were kept best first.
    A vocabulary of nine words makes ties at the k-th score the common case."""
    index = BM25Index(docs)
    want = _dense_top(index, queries, k)
    _assert_same_tops(index.top(queries, k), want)
    _assert_same_tops(index.top_product(queries, k), want)
    with planning_always():
        _assert_same_tops(index.top(queries, k), want)
    path = index.save(tmp_path_factory.mktemp("bm25") / "index.npz")
    _assert_same_tops(BM25Index.load(path).top(queries, k), want)
    old = dict(np.load(path))
    for key in ("by_doc_data", "by_doc_indices"):
        del old[key]
    shuffled = np.random.default_rng(0).permutation(len(old["data"]))   # any order within a row
    order = np.lexsort((shuffled, np.repeat(np.arange(len(old["indptr"]) - 1), np.diff(old["indptr"]))))
    old["data"], old["indices"] = old["data"][order], old["indices"][order]
    np.savez(path, **old)
    _assert_same_tops(BM25Index.load(path).top(queries, k), want)


@contextlib.contextmanager
def planning_always():
    """The kernel's planner (which word to read next) even for a few postings, as in a large KB."""
    saved = bm25_kernel.PLAN_FROM
    bm25_kernel.PLAN_FROM = 0
    try:
        yield
    finally:
        bm25_kernel.PLAN_FROM = saved


def test_top_of_a_large_index_stops_early_and_stays_exact():
    """Thousands of documents sharing a common word, a few with a rare one: the top-k of a
    query with both words is the product's, for k below and above the rare word's documents."""
    rng = np.random.default_rng(0)
    first = ["john", "mary", "george", "anne"]
    docs = [[first[i % 4], f"name{rng.integers(0, 300)}"] + (["smith"] if i % 97 == 0 else []) for i in range(5000)]
    index = BM25Index(docs)
    queries = [["john", "smith"], ["mary"], ["name7", "anne", "smith"], ["nobody"],
               ["george", "john", "name3", "name250", "anne", "smith"], ["mary", "name12", "name12"]]
    for k in (1, 10, 60, 200):
        want = _dense_top(index, queries, k)
        _assert_same_tops(index.top_product(queries, k), want)
        _assert_same_tops(index.top(queries, k), want)
        with planning_always():
            _assert_same_tops(index.top(queries, k), want)


def test_top_with_k_beyond_the_corpus_or_none():
    """k above the number of documents is the whole ranking (the kernel's buffers are sized by
    the documents, not by k); k = 0 or below is nothing, from either path."""
    index = BM25Index([["john", "smith"], ["mary", "smith"], ["john", "jones"]])
    queries = [["john", "smith"], ["nobody"]]
    want = _dense_top(index, queries, 3)
    _assert_same_tops(index.top(queries, 10 ** 12), want)
    _assert_same_tops(index.top_product(queries, 10 ** 12), want)
    for k in (0, -3):
        assert [len(d) for d, _ in index.top(queries, k)] == [0, 0]
        assert [len(d) for d, _ in index.top_product(queries, k)] == [0, 0]


def _falls_back_with_one_warning() -> BM25Index:
    """Link a tiny index with the kernel made unusable: one warning, the product's answers, and
    the kernel off for the rest of the process."""
    index = BM25Index([["john", "smith"], ["mary", "smith"], ["john", "jones"]])
    queries = [["john", "smith"], ["smith"]]
    with pytest.warns(RuntimeWarning, match="could not build the BM25 top-k kernel"):
        got = index.top(queries, 2)
    _assert_same_tops(got, _dense_top(index, queries, 2))
    assert not bm25_kernel.enabled()
    return index


def test_a_kernel_numba_cannot_compile_falls_back_to_the_product(monkeypatch):
    """A numba that cannot compile the kernel (another release) costs speed, not answers: one
    warning, then the sparse product for the rest of the process."""
    errors = pytest.importorskip("numba.core.errors")

    def broken(*args):
        raise errors.TypingError("no implementation for this construct")

    monkeypatch.setattr(bm25_kernel, "_kernel", lambda: broken)
    monkeypatch.setattr(bm25_kernel, "_broken", None)
    index = _falls_back_with_one_warning()
    queries = [["john", "smith"], ["smith"]]
    _assert_same_tops(index.top(queries, 2), _dense_top(index, queries, 2))    # no second warning needed


def test_a_numba_that_cannot_be_imported_falls_back_to_the_product(monkeypatch):
    """numba found by the import system but broken (e.g. built for another numpy): the same."""
    import sys

    monkeypatch.setattr(bm25_kernel, "AVAILABLE", True)
    monkeypatch.setattr(bm25_kernel, "_compiled", None)
    monkeypatch.setattr(bm25_kernel, "_broken", None)
    for name in [m for m in sys.modules if m == "numba" or m.startswith("numba.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "numba", None)          # `import numba` raises ImportError
    _falls_back_with_one_warning()

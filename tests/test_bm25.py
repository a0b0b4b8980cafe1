"""The sparse BM25 index against rank_bm25's BM25Okapi, the reference it reimplements."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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

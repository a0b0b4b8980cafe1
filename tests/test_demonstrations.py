import numpy as np
import pytest

from gen_linker.datasets.jsonl import parse_mention
from gen_linker.candidates import BM25NameIndex, exact_name_candidates
from gen_linker.demonstrations import BM25Retriever, RandomRetriever, SimCSERetriever, demonstration_pool
from gen_linker.schema import Mention

from conftest import TEST, TRAIN


def mentions(rows):
    return [parse_mention(r, source="fixture", line=i) for i, r in enumerate(rows, 1)]


@pytest.fixture
def pool(kb):
    return demonstration_pool(mentions(TRAIN), kb)


def test_pool_uses_gold_names_and_skips_unknown_gold(kb):
    rows = TRAIN + [{"id": "x", "text": "Someone here", "mention": "Someone", "gold": "Q404"}]
    pool = demonstration_pool(mentions(rows), kb)
    assert len(pool) == len(TRAIN)
    assert pool[0].name == "Stefanie Powers"


def test_bm25_orders_least_to_most_similar_and_excludes_the_query(pool):
    query = Mention("q", TRAIN[0]["text"], TRAIN[0]["mention"])       # the very pair of pool[0]
    demos = BM25Retriever(pool).retrieve([query], 3)[0]
    assert len(demos) == 3
    assert all((d.text, d.mention) != (query.text, query.mention) for d in demos)
    # the same sentence with the other mention is the most similar: it sits last
    assert (demos[-1].text, demos[-1].mention) == (TRAIN[1]["text"], TRAIN[1]["mention"])
    scores = BM25Retriever(pool).scores([query])[0]
    idx = [next(i for i, p in enumerate(pool) if p == d) for d in demos]
    assert list(scores[idx]) == sorted(scores[idx])


def test_random_is_reproducible_and_excludes_the_query(pool):
    q = Mention("q", TRAIN[2]["text"], TRAIN[2]["mention"])
    a = RandomRetriever(pool, seed=1).retrieve([q], 4)[0]
    assert a == RandomRetriever(pool, seed=1).retrieve([q], 4)[0]
    assert all((d.text, d.mention) != (q.text, q.mention) for d in a)
    assert len(RandomRetriever(pool).retrieve([q], 99)[0]) == len(pool) - 1


@pytest.mark.real_models
def test_simcse_with_packaged_minilm(pool, tmp_path):
    q = mentions(TEST)[0]                                   # "Griezmann playing away to Salamanca..."
    r = SimCSERetriever(pool, cache_dir=tmp_path)
    demos = r.retrieve([q], 3)[0]
    assert demos[-1].name == "Antoine Griezmann"            # the Griezmann sentence is the closest
    sims = r.scores([q])[0]
    idx = [pool.index(d) for d in demos]
    assert list(sims[idx]) == sorted(sims[idx])
    assert len(list(tmp_path.glob("emb-*.npy"))) == 1      # index cached...
    again = SimCSERetriever(pool, cache_dir=tmp_path)
    assert np.array_equal(again.index, r.index)             # ...and reused


def test_name_candidates(kb):
    assert [c.entity_id for c in exact_name_candidates(kb, "paris")] == ["Q5", "Q6"]
    bm25 = BM25NameIndex(kb).candidates("Robertson", 3)
    assert bm25[0].entity_id == "Q3"

"""KB folders at scale, checked small: memory-mapped arrays (trie, BM25, embeddings), the faiss
ANN path of the candidate retriever (5k synthetic entities, the exact-search threshold lowered
to 1k), resumable embedding builds, and `build-kb --prepare`. Sizes and speeds at 10k..1M
entities are eval/bench_kb_scale.py's."""
from __future__ import annotations

import json
import mmap
import random

import numpy as np
import pytest

from gen_linker.arrayfiles import load_arrays, save_arrays
from gen_linker.bm25 import BM25Index, words
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity, Mention
from gen_linker.trie import Trie

from conftest import write_jsonl

FIRST = ["Noel", "Stefanie", "Oscar", "Francis", "Paris", "Antoine", "Ruud", "Maria", "John", "Ada", "Emil", "Lena"]
LAST = ["Harrison", "Powers", "Robertson", "Condon", "Hilton", "Griezmann", "Nistelrooy", "Curie", "Lovelace",
        "Drake", "Coward", "Berg", "Stone", "Vance", "Okafor", "Ishikawa"]
JOBS = ["singer", "actress", "footballer", "painter", "chemist", "politician", "poet", "engineer"]
PLACES = ["London", "Paris", "Madrid", "Lagos", "Osaka", "Berlin", "Lima", "Oslo"]


def synthetic_entities(n: int, seed: int = 0) -> list[Entity]:
    """`n` entities with name clashes and Wikidata-style descriptions: distractors, as the
    benchmark's, but few enough words that tiny encoders tell them apart a little."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}" + (f" {rng.choice(LAST)}" if rng.random() < 0.5 else "")
        desc = f"{rng.choice(JOBS)} born {rng.randint(1800, 2000)} in {rng.choice(PLACES)}"
        out.append(Entity(f"S{i}", name, aliases=(name.split()[-1],) if rng.random() < 0.2 else (), description=desc))
    return out


@pytest.fixture(scope="module")
def big_kb_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kb5k") / "kb"
    return KnowledgeBase.from_entities(synthetic_entities(5000)).save(folder)


def _mapped(a: np.ndarray) -> bool:
    base = a
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return isinstance(base, mmap.mmap)


def test_npz_members_are_mapped_read_only_and_equal(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"big": rng.standard_normal((300, 100)).astype(np.float32), "ints": np.arange(40_000, dtype=np.int64),
              "small": np.arange(5, dtype=np.int32), "scalar": np.array(7), "fortran": np.asfortranarray(
                  rng.standard_normal((200, 90)))}
    path = save_arrays(tmp_path / "a.npz", arrays)
    loaded = load_arrays(path)
    for name, a in arrays.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert loaded[name].dtype == a.dtype
    assert _mapped(loaded["big"]) and _mapped(loaded["ints"]) and _mapped(loaded["fortran"])
    assert not loaded["big"].flags.writeable
    assert not _mapped(loaded["small"])             # tiny members are simply read
    with np.load(path) as z:                        # still a plain .npz for numpy itself
        np.testing.assert_array_equal(z["big"], arrays["big"])


def test_saved_trie_loads_mapped_and_decodes_the_same(tmp_path):
    rng = np.random.default_rng(1)
    sequences = [rng.integers(1, 5000, rng.integers(1, 7)).tolist() for _ in range(20_000)]
    trie = Trie.build(sequences, end_token=0)
    trie.save(tmp_path / "t.npz")
    again = Trie.load(tmp_path / "t.npz")
    assert _mapped(again.child_token) and _mapped(again.child_start)
    assert again.digest == trie.digest
    for seq in sequences[:200]:
        assert again.value(again.walk(seq + [0])) == trie.value(trie.walk(seq + [0]))
    assert Trie.load(tmp_path / "t.npz", mmap_mode=False).digest == trie.digest


def test_saved_bm25_scores_and_sparse_top_equal_the_dense_ones(tmp_path, monkeypatch):
    from gen_linker import arrayfiles

    monkeypatch.setattr(arrayfiles, "MAP_FROM_BYTES", 0)       # map even this small index's arrays
    docs = [words(e.name + " " + " ".join(e.aliases)) for e in synthetic_entities(3000, seed=2)]
    index = BM25Index(docs)
    index.save(tmp_path / "bm25.npz")
    loaded = BM25Index.load(tmp_path / "bm25.npz")
    assert _mapped(loaded.weights.indices) and _mapped(loaded.weights.data)
    queries = [["powers"], ["noel", "harrison", "harrison"], ["nobody", "knows"], [], ["paris", "hilton", "unknownword"]]
    dense = index.scores(queries)
    np.testing.assert_array_equal(loaded.scores(queries), dense)
    for (idx, vals), row in zip(loaded.top(queries, 50), dense):
        positive = np.flatnonzero(row > 0)
        expected = positive[np.lexsort((positive, -row[positive]))][:50]   # best first, ties by index
        assert idx.tolist() == expected.tolist()
        np.testing.assert_array_equal(vals, row[expected])


def test_kb_folder_caches_bm25_and_candidates_stay_the_same(big_kb_folder):
    from gen_linker.candidates import BM25NameIndex

    kb = KnowledgeBase.open(big_kb_folder)
    first = BM25NameIndex(kb)                       # builds and caches
    cached = list((big_kb_folder / "cache").glob("bm25-names-*.npz"))
    assert len(cached) == 1
    second = BM25NameIndex(KnowledgeBase.open(big_kb_folder))
    assert _mapped(second.bm25.weights.data)
    sparse = BM25NameIndex(kb, exact_below=1000)    # the large-KB path: sparse top-k
    for mention in ("Powers", "Noel Harrison", "Vance Okafor", "Nobody"):
        a, b, c = first.candidates(mention, 20), second.candidates(mention, 20), sparse.candidates(mention, 20)
        assert a == b
        assert [x.score for x in c] == [x.score for x in a]          # same scores; ties ordered by index
        assert {x.entity_id for x in c if x.score > a[-1].score} == {x.entity_id for x in a if x.score > a[-1].score}


def test_ann_retrieval_over_5k_entities(big_kb_folder, tiny_bert):
    """With the threshold at 1k, 5k entities go through the faiss IVF index: most of the exact
    top-k is found, every cosine reported is the exact one, the fused detail still has a cosine
    for each candidate, and the index is cached in the KB folder and read back."""
    pytest.importorskip("faiss")
    from gen_linker.candidates import CandidateRetriever, mention_text
    from gen_linker.encoders import SentenceEncoder

    kb = KnowledgeBase.open(big_kb_folder)
    encoder = SentenceEncoder(str(tiny_bert))
    exact = CandidateRetriever(kb, encoder, depth=50)
    assert exact.ann is None and _mapped_npy(exact.entity_emb)
    ann = CandidateRetriever(kb, encoder, depth=50, exact_below=1000, nprobe=16)
    assert ann.ann is not None and len(list((big_kb_folder / "cache").glob("ann-*.faiss"))) == 1
    rng = random.Random(3)
    entities = list(kb)
    mentions = []
    for i in range(40):
        e = rng.choice(entities)
        surface = e.name.split()[-1]
        mentions.append(Mention(f"m{i}", f"{surface} was a {e.description}", surface, 0, len(surface), gold=e.id))

    recall = []
    queries = encoder.encode([mention_text(m) for m in mentions])
    for (idx, cos), q, ranking in zip(ann.dense_top(queries), queries, exact.dense_rankings(mentions)):
        np.testing.assert_allclose(cos, exact.entity_emb[idx] @ q, rtol=1e-5, atol=1e-6)   # exact cosines
        assert (np.diff(cos) <= 1e-7).all()                                                  # best first
        recall.append(len(set(idx[:10].tolist()) & set(ranking[:10].tolist())) / 10)
    assert np.mean(recall) >= 0.8, recall

    scores = ann.dense_scores(mentions[:3])
    assert scores.shape == (3, len(kb))
    assert np.isfinite(scores).sum(axis=1).tolist() == [50, 50, 50]

    detailed = ann.retrieve_detailed(mentions[:5], k=20)
    for info, m, q in zip(detailed, mentions[:5], queries[:5]):
        assert len(info) == 20
        for c in info:
            assert c.dense == pytest.approx(float(exact.entity_emb[kb_index(kb, c.entity_id)] @ q), abs=1e-5)
    fused = ann.retrieve(mentions[:5], k=20)
    assert [[c.entity_id for c in cs] for cs in fused] == [[c.entity_id for c in info] for info in detailed]

    again = CandidateRetriever(KnowledgeBase.open(big_kb_folder), encoder, depth=50, exact_below=1000, nprobe=16)
    assert [r.tolist() for r in again.dense_rankings(mentions[:5])] == [r.tolist() for r in ann.dense_rankings(mentions[:5])]


def kb_index(kb: KnowledgeBase, entity_id: str) -> int:
    return [e.id for e in kb].index(entity_id)


def _mapped_npy(a) -> bool:
    return isinstance(a, np.memmap) or _mapped(a)


def test_embeddings_resume_after_an_interrupted_build(tmp_path, tiny_bert, monkeypatch):
    """A build of many texts writes its rows chunk by chunk; interrupted after two chunks, the
    next call encodes only the rest, and the rows equal a build in one go."""
    from gen_linker import encoders
    from gen_linker.encoders import SentenceEncoder

    monkeypatch.setattr(encoders, "RESUMABLE_FROM", 100)
    monkeypatch.setattr(encoders, "RESUMABLE_CHUNK", 40)
    texts = [f"{e.name}: {e.description}" for e in synthetic_entities(230, seed=4)]
    encoder = SentenceEncoder(str(tiny_bert))
    reference = encoder.encode(texts)

    calls: list[int] = []
    real_encode = encoder.encode_reference                    # what the cache is written with (float32)

    def interrupted(batch, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(batch))
        return real_encode(batch, **kw)

    monkeypatch.setattr(encoder, "encode_reference", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encoder.encode_cached(texts, tmp_path)
    state = json.loads(next(tmp_path.glob("*.partial.json")).read_text())
    assert state["done"] == 80 and not list(tmp_path.glob("emb-*[0-9a-f].npy"))

    calls.clear()
    monkeypatch.setattr(encoder, "encode_reference",
                        lambda batch, **kw: (calls.append(len(batch)), real_encode(batch, **kw))[1])
    rows = encoder.encode_cached(texts, tmp_path, mmap_mode=True)
    assert calls == [40, 40, 40, 30]                          # only the 150 texts not done
    assert isinstance(rows, np.memmap) and not rows.flags.writeable
    np.testing.assert_allclose(rows, reference, atol=1e-6)
    assert not list(tmp_path.glob("*.partial.*"))


def test_build_kb_prepare_writes_the_caches(tmp_path, entities_file):
    from gen_linker.cli import main

    folder = tmp_path / "kbdir"
    assert main(["build-kb", str(entities_file), str(folder), "--prepare", "--linker", "bm25", "--no-progress"]) == 0
    assert (folder / "entities.jsonl").exists() and json.loads((folder / "kb.json").read_text())["entities"] == 10
    assert len(list((folder / "cache").glob("bm25-names-*.npz"))) == 1


def test_bm25_cache_of_an_earlier_version_is_removed_when_rebuilt(tmp_path, entities_file):
    """A folder cached by an earlier version holds the index in an older file format (55 MB at a
    million names): rebuilt in the current one, the old file goes."""
    from gen_linker.candidates import BM25NameIndex
    from gen_linker.cli import main

    folder = tmp_path / "kbdir"
    assert main(["build-kb", str(entities_file), str(folder), "--no-progress"]) == 0
    BM25NameIndex(KnowledgeBase.open(folder))
    (current,) = (folder / "cache").glob("bm25-names-*-bydoc.npz")
    stale = [current.with_name(current.name.replace("-bydoc.npz", tail)) for tail in (".npz", "-impact.npz")]
    for path in stale:
        path.write_bytes(current.read_bytes())
    current.unlink()
    rebuilt = BM25NameIndex(KnowledgeBase.open(folder))
    assert [p.name for p in (folder / "cache").glob("bm25-names-*.npz")] == [current.name]
    assert rebuilt.candidates("Noel Harrison", 5)[0].entity_id == "Q1"


def test_build_kb_reports_bad_lines_and_streams(tmp_path, capsys):
    from gen_linker.cli import main

    rows = [e.to_dict() for e in synthetic_entities(300, seed=5)]
    path = write_jsonl(tmp_path / "e.jsonl", rows[:100] + ["{broken"] + rows[100:])
    with pytest.warns(UserWarning, match="1 unreadable"):
        assert main(["build-kb", str(path), str(tmp_path / "kb")]) == 0
    out = capsys.readouterr()
    assert "300 entities" in out.out and "1 unreadable line(s) skipped" in out.out
    assert "reading e.jsonl" in out.err                        # the progress bar
    assert len(KnowledgeBase.open(tmp_path / "kb")) == 300

import numpy as np
from hypothesis import given, settings, strategies as st

from gen_linker.trie import DEAD, ROOT, Trie, name_trie

END = 0
seqs = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=6), min_size=1, max_size=40)


def first_index(sequences):
    out = {}
    for i, s in enumerate(sequences):
        out.setdefault(tuple(s), i)
    return out


@settings(max_examples=200, deadline=None)
@given(seqs)
def test_holds_exactly_the_sequences(sequences):
    trie = Trie.build(sequences, END)
    got = {tuple(s): v for s, v in trie.sequences()}
    assert got == first_index(sequences)


@settings(max_examples=100, deadline=None)
@given(seqs, st.randoms(use_true_random=False))
def test_any_constrained_walk_ends_in_a_name_and_allowed_is_never_empty(sequences, rnd):
    trie = Trie.build(sequences, END)
    names = first_index(sequences)
    for _ in range(20):
        state, path = ROOT, []
        while True:
            allowed = trie.allowed(state)
            assert len(allowed) > 0
            tok = int(rnd.choice(list(allowed)))
            state = trie.step(state, tok)
            assert state != DEAD
            if tok == END:
                break
            path.append(tok)
        assert trie.value(state) == names[tuple(path)]
        assert len(trie.allowed(state)) > 0          # a finished beam may only repeat END


def test_steps_outside_the_trie_are_dead(tmp_path):
    trie = Trie.build([[1, 2], [1, 3]], END)
    assert trie.walk([1, 4]) == DEAD
    assert trie.allowed(DEAD).tolist() == [END]
    assert trie(0, [1]) == [2, 3]
    assert trie.value(trie.walk([1, 2])) == -1        # not yet ended
    trie.save(tmp_path / "t.npz")
    again = Trie.load(tmp_path / "t.npz")
    assert again.sequences() == trie.sequences() and again.end_token == END


def test_compact_for_many_names():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 30000, rng.integers(2, 9)).tolist() for _ in range(50_000)]
    trie = Trie.build(sequences, END)
    assert trie.nbytes < 60 * len(sequences) * 8     # a few int32 per node, no Python objects
    assert trie.value(trie.walk(sequences[123] + [END])) == first_index(sequences)[tuple(sequences[123])]


def test_name_trie_is_cached_per_tokenizer(kb, tiny_llm, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    t1 = name_trie(kb.names(), tok, tok.eos_token_id, cache_dir=tmp_path, key=kb.fingerprint)
    files = list(tmp_path.glob("trie-*.npz"))
    assert len(files) == 1
    t2 = name_trie(kb.names(), tok, tok.eos_token_id, cache_dir=tmp_path, key=kb.fingerprint)
    assert t2.sequences() == t1.sequences()
    # every KB name can be decoded back from the trie, and maps to all its entities
    decoded = {tok.decode(s) for s, _ in t1.sequences()}
    assert decoded == set(kb.names())
    paris = kb.names().index("Paris")
    assert sorted(kb.ids_for_name(kb.names()[paris])) == ["Q5", "Q6"]

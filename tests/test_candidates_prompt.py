"""Candidates with descriptions in the generative prompt, trie over the KB or the candidates."""
import json

import pytest

from conftest import ENTITIES, TEST, TRAIN, write_jsonl
from gen_linker.errors import PromptTemplateError
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker, image_refs
from gen_linker.prompting import PromptTemplate
from gen_linker.demonstrations import demonstration_pool, make_retriever
from gen_linker.schema import Entity, Mention

pytestmark = pytest.mark.real_models    # candidate retrieval uses the packaged MiniLM
KB = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])


def test_template_puts_a_candidate_block_before_the_query():
    t = PromptTemplate.load("gemel_candidates")
    blocks = t.blocks("Paris at night", "Paris", [], [("Paris", "capital of France " * 20), ("Paris Hilton", None)])
    assert len(blocks) == 3 and blocks[-1].startswith("[Text]Paris at night")
    assert blocks[1].startswith("[Candidates]\nParis: capital of France") and blocks[1].endswith("Paris Hilton: \n")
    assert len(blocks[1].split("\n")[1].split()) == 1 + 30 + 1     # name, 30 words, "..."
    with pytest.raises(PromptTemplateError, match="gemel_candidates"):
        PromptTemplate.load("gemel").candidate_block([("a", "b")])
    assert image_refs(Mention("q", "t", "t", image="q.png"), [], [("a", "b")]) == [None, None, "q.png"]


@pytest.mark.parametrize("scope", ["kb", "candidates"])
def test_linking_with_candidates_in_the_prompt(hf_backend, scope):
    pool = demonstration_pool([Mention.from_dict(r) for r in TRAIN], KB)
    cfg = GenerativeConfig(num_demos=2, retriever="bm25", num_beams=3, prompt="gemel_candidates",
                           candidates_in_prompt=3, trie_scope=scope)
    linker = GenerativeLinker(KB, hf_backend, make_retriever("bm25", pool), cfg,
                              descriptions={"Q4": "a written description of Condon"})
    mentions = [Mention.from_dict(r) for r in TEST]
    ids = linker.prompt_ids(mentions[1], [], linker.candidate_lists(mentions[1:2])[0])[0]
    text = hf_backend.tokenizer.decode(ids)
    assert "Francis Condon: a written description of Condon" in text          # descriptions override the KB's
    results = linker.link(mentions)
    allowed = linker.candidate_lists(mentions)
    for r, cands in zip(results, allowed):
        assert r.entity_id in KB
        if scope == "candidates":                                               # only the prompt's names
            assert {c.name for c in r.candidates} <= {name for name, _ in cands}
    if scope == "candidates":   # one batch with a trie per mention == each mention decoded alone
        for m, r in zip(mentions, results):
            alone = linker.link([m])[0]
            assert [c.name for c in r.candidates] == [c.name for c in alone.candidates]
            assert r.score == pytest.approx(alone.score, abs=1e-4)


def test_cli_candidates_in_prompt_and_its_errors(tiny_llm, tmp_path):
    from gen_linker.cli import main

    kb_file = write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    test_file = write_jsonl(tmp_path / "test.jsonl", TEST)
    desc = write_jsonl(tmp_path / "desc.jsonl", [{"id": "Q1", "description": "singer"}, {"oops": 1}])
    base = ["link", "--linker", "generative", "--kb", str(kb_file), "--input", str(test_file), "--llm", str(tiny_llm), "--dtype", "float32",
            "--beams", "2", "--no-progress"]
    assert main(base + ["--output", str(tmp_path / "a.jsonl"), "--candidates-in-prompt", "3", "--trie-scope",
                        "candidates", "--descriptions", str(desc)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == len(TEST) and all(r["entity_id"] in KB for r in rows)
    assert main(base + ["--output", str(tmp_path / "b.jsonl"), "--trie-scope", "candidates"]) == 1

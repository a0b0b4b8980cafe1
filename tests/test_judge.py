"""The LLM judge of the fused linker's unsure answers (a real tiny Llama built from a config),
the checksummed fetch of parted models (fake wheels built here), and compare's spec identity."""
import hashlib
import zipfile

import numpy as np
import pytest

from conftest import ENTITIES, TEST, TRAIN
from gen_linker.errors import GenLinkerError
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity, Mention

KB = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])


def test_option_lines_tell_namesakes_apart_and_the_question_letters_them():
    from gen_linker.judge import option_line, question

    line = option_line("Judith Butler", "Sex: female. Birth: 1956, Cleveland. Occupation: philosopher, sociologist, "
                                        "writer, feminist, literary critic, university teacher. Languages: English.")
    assert line == "Judith Butler (female; born 1956; philosopher, sociologist, writer, feminist, literary critic)"
    assert option_line("Paris", "capital of France") == "Paris (capital of France)"
    assert option_line("Paris", None) == "Paris"
    assert option_line("Raven", "Occupation: .") == "Raven"
    q = question(Mention("m", "Butler receives the Adorno Award", "Butler"), ["a", "b"])
    assert "\nA. a\nB. b\n" in q and '"Butler"' in q


def test_combine_adds_the_weighted_judge_to_the_fusions_log_probability():
    """(and a weight of 0 ignores even a judge that rules an option out: no 0 x -inf)"""
    from gen_linker.judge import combine

    fused = np.array([2.0, 1.0, 0.0])
    judge = np.log([0.1, 0.2, 0.7])
    got = combine(fused, judge, 2.0)
    expected = fused - np.log(np.exp(fused).sum()) + 2.0 * judge
    assert np.allclose(got, expected) and int(np.argmax(got)) == 2
    assert int(np.argmax(combine(fused, judge, 0.0))) == 0
    assert np.isfinite(combine(fused, [0.0, -np.inf, -np.inf], 0.0)).all()


def test_a_judged_answers_confidence_softens_with_the_temperature():
    from gen_linker.judge import judged_confidence

    scores = [-0.2, -2.0, -4.0]
    sure, soft = judged_confidence(scores, 1.0), judged_confidence(scores, 2.18)
    assert np.isclose(sure, np.exp(-0.2) / np.exp(scores).sum()) and 1 / 3 < soft < sure < 1


@pytest.fixture(scope="module")
def judge(tiny_llm):
    from gen_linker.judge import LLMJudge

    return LLMJudge(str(tiny_llm), dtype="float32", batch_size=3)


def test_letter_log_probabilities_are_normalised_and_batching_changes_nothing(judge):
    from gen_linker.judge import question

    mentions = [Mention.from_dict(r) for r in TEST]
    questions = [question(m, [e["name"] for e in ENTITIES[: 2 + i % 3]]) for i, m in enumerate(mentions)]
    sizes = [2 + i % 3 for i in range(len(mentions))]
    batched = judge.letter_logprobs(questions, sizes)
    one_by_one = [judge.letter_logprobs([q], [n])[0] for q, n in zip(questions, sizes)]
    assert [len(x) for x in batched] == sizes
    assert all(np.isclose(np.exp(x).sum(), 1.0, atol=1e-5) for x in batched)
    for a, b in zip(batched, one_by_one):               # left padding with shifted positions = no padding
        assert np.allclose(a, b, atol=1e-4)
    assert len({tuple(np.round(x, 3)) for x in batched}) > 1   # the questions differ, so do the answers
    with pytest.raises(GenLinkerError, match="options"):
        judge.letter_logprobs(["q"], [11])


@pytest.fixture(scope="module")
def fusion_folder(tiny_bert, tmp_path_factory):
    from gen_linker.linkers.fused import train_fusion
    from gen_linker.spec import LinkerSpec

    folder = tmp_path_factory.mktemp("judge_fusion")
    dev = [Mention(f"{r['id']}-{i}", r["text"], r["mention"], gold=r["gold"]) for i, r in enumerate(TRAIN * 3)]
    spec = LinkerSpec.from_dict({"linker": "fused", "candidates": {"encoder": str(tiny_bert)},
                                 "rerank": {"candidates": 6}})
    train_fusion(spec, KB, dev, folder, progress=False)
    return spec.merged({"rerank.fusion": str(folder)})


def test_the_judge_reorders_only_the_unsure_answers_best_candidates(fusion_folder, tiny_llm, judge):
    from gen_linker import load_linker
    from gen_linker.judge import combine, judged_confidence, option_line, question

    mentions = [Mention.from_dict(r) for r in TEST]
    plain_linker = load_linker(KB, fusion_folder)
    plain = plain_linker.link(mentions)
    judged_spec = fusion_folder.merged({"rerank.judge": str(tiny_llm), "rerank.judge_below": 1.0,
                                        "rerank.judge_weight": 5.0, "rerank.judge_candidates": 3,
                                        "backend.dtype": "float32"})
    judged = load_linker(KB, judged_spec).link(mentions)
    changed = 0
    for m, p, j in zip(mentions, plain, judged):
        top = p.candidates[:3]
        lp = judge.letter_logprobs([question(m, [option_line(c.name, KB.get(c.entity_id).description)
                                                  for c in top])], [len(top)])[0]
        new = combine([c.score for c in top], lp, 5.0)
        expected = [top[i].entity_id for i in np.argsort(-new, kind="stable")]
        assert [c.entity_id for c in j.candidates[:3]] == expected
        assert [c.entity_id for c in j.candidates[3:]] == [c.entity_id for c in p.candidates[3:len(j.candidates)]]
        assert all(a.score >= b.score for a, b in zip(j.candidates, j.candidates[1:]))
        mass = plain_linker.fusion.confidences(np.array([c.score for c in p.candidates]))[:3].sum()
        assert np.isclose(j.confidence, judged_confidence(new, judged_spec.rerank.judge_temperature, mass))
        assert 0.0 < j.confidence <= mass + 1e-9          # what the fusion gave NIL stays out of it
        changed += j.entity_id != p.entity_id
    assert changed > 0                                   # a weight of 5 lets the judge overrule the fusion
    confident = load_linker(KB, judged_spec.merged({"rerank.judge_below": 0.0})).link(mentions)
    assert [(r.entity_id, r.confidence) for r in confident] == [(r.entity_id, r.confidence) for r in plain]


def test_judge_settings_are_checked_before_any_model_loads(fusion_folder, tmp_path):
    from gen_linker import load_linker
    from gen_linker.spec import SpecError

    for key, value, message in (("rerank.judge_below", 1.5, "judge_below"), ("rerank.judge_weight", -1.0, "judge_weight"),
                                ("rerank.judge_candidates", 1, "judge_candidates"),
                                ("rerank.judge", str(tmp_path / "no-such-llm"), "no-such-llm")):
        with pytest.raises(SpecError, match=message):
            load_linker(KB, fusion_folder.merged({key: value}))


def fake_parts(folder, chunks):
    """Wheels `fake-part{i}==1.0` each holding `fake_part{i}/data/part{i}.bin`, and the model."""
    from gen_linker.model_parts import PartedModel

    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(chunks, 1):
        with zipfile.ZipFile(folder / f"fake_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"fake_part{i}/data/part{i}.bin", chunk)
    return PartedModel(name="fake", packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(chunks) + 1)),
                       members=tuple(f"fake_part{i}/data/part{i}.bin" for i in range(1, len(chunks) + 1)),
                       part_sha256=tuple(hashlib.sha256(c).hexdigest() for c in chunks),
                       sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), gguf="fake.gguf", source="test")


def test_parted_models_are_assembled_only_from_parts_with_the_pinned_checksums(tmp_path):
    from dataclasses import replace

    from gen_linker.model_parts import QWEN_CODER_1_5B, assemble

    chunks = [b"GGUF" + bytes(range(50)), b"second part", b"third"]
    model = fake_parts(tmp_path / "wheels", chunks)
    out = assemble(model, tmp_path / "wheels", tmp_path / "whole.gguf")
    assert out.read_bytes() == b"".join(chunks)
    bad = fake_parts(tmp_path / "bad", [chunks[0], b"second part, tampered", chunks[2]])
    bad = replace(bad, part_sha256=model.part_sha256, sha256=model.sha256)
    with pytest.raises(GenLinkerError, match=r"part 2 of fake .*fake_part2/data/part2.bin"):
        assemble(bad, tmp_path / "bad", tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists() and not list(tmp_path.glob("*.partial"))
    with pytest.raises(GenLinkerError, match="no wheel of fake-part1==1.0"):
        assemble(model, tmp_path, tmp_path / "none.gguf")
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "none.gguf").exists()
    assert len(QWEN_CODER_1_5B.packages) == 22 and all(len(h) == 64 for h in QWEN_CODER_1_5B.part_sha256)


def test_get_judge_never_replaces_a_folder_that_is_not_a_judge_model(tmp_path):
    from gen_linker.model_parts import get_model

    model = fake_parts(tmp_path / "wheels", [b"GGUF"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(GenLinkerError, match="not an empty folder"):
        get_model(model, tmp_path / "mine", tmp_path / "wheels")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_compare_does_not_relink_a_run_whose_spec_only_lacks_keys_added_since():
    import yaml

    from gen_linker.compare import same_spec
    from gen_linker.spec import LinkerSpec

    spec = LinkerSpec.from_dict({"linker": "bm25", "top_k": 5})
    text = spec.to_yaml()
    older = yaml.safe_load(text)
    del older["rerank"]["judge"], older["rerank"]["judge_below"]          # written before these keys existed
    assert same_spec(yaml.safe_dump(older), text)
    older["top_k"] = 7
    assert not same_spec(yaml.safe_dump(older), text)
    assert not same_spec(yaml.safe_dump({**yaml.safe_load(text), "retired_key": 1}), text)
    before_dtype = yaml.safe_load(text)
    del before_dtype["candidates"]["encoder_dtype"]      # added since too, but its default changed behaviour
    assert not same_spec(yaml.safe_dump(before_dtype), text)
    assert not same_spec(None, text)


def test_a_judge_named_but_not_fetched_says_how_to_fetch_it(fusion_folder, tmp_path, monkeypatch):
    from gen_linker import load_linker
    from gen_linker.errors import ModelNotFoundError

    monkeypatch.setenv("GEN_LINKER_CACHE", str(tmp_path))            # an empty cache: nothing fetched
    with pytest.raises(ModelNotFoundError, match="gen-linker get-judge --model qwen2.5-coder-1.5b-instruct"):
        load_linker(KB, fusion_folder.merged({"rerank.judge": "qwen2.5-coder-1.5b-instruct"}))


def test_the_judges_defaults_are_the_settings_chosen_on_dev():
    import json
    from pathlib import Path

    from gen_linker.spec import RerankSpec

    fit = json.loads((Path(__file__).resolve().parent.parent / "eval" / "results" / "judge_fit.json").read_text())
    r = RerankSpec()
    assert (r.judge_below, r.judge_weight, r.judge_temperature) == \
        (fit["chosen"]["below"], fit["chosen"]["weight"], fit["temperature"])

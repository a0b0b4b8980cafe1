"""Task-tuning the judge LLM (a real tiny Llama built from a config) and the llm-choice linker
that asks it: training lowers the loss and changes the answers, the saved adapter reloads to the
same answers, a killed run resumes, a missing or corrupt adapter is named, the recipe runs."""
import numpy as np
import pytest
import yaml

from conftest import ENTITIES, TEST, TRAIN, write_jsonl
from gen_linker.errors import GenLinkerError
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity, Mention

KB = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])


@pytest.fixture(scope="module")
def retriever(tiny_bert):
    from gen_linker.candidates import CandidateRetriever
    from gen_linker.encoders import SentenceEncoder

    return CandidateRetriever(KB, SentenceEncoder(str(tiny_bert)))


@pytest.fixture(scope="module")
def trained(tiny_llm, retriever, tmp_path_factory):
    """(untrained answers, trained judge, its questions, report, adapter folder)."""
    from gen_linker.judge import LLMJudge
    from gen_linker.judge_training import JudgeTrainConfig, questions, train_judge
    from gen_linker.lora import LoraSpec, save_lora

    config = JudgeTrainConfig(candidates=4, epochs=6, lr=3e-3, batch_size=2, checkpoint_every=2,
                              lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]})
    asked = [q for q in questions(KB, retriever, [Mention.from_dict(r) for r in TRAIN], 4) if q.gold is not None]
    judge = LLMJudge(str(tiny_llm), dtype="float32")
    before = judge.letter_logprobs([q.text for q in asked], [len(q.entity_ids) for q in asked])
    out = tmp_path_factory.mktemp("judge_adapter")
    report = train_judge(judge, asked, asked, config, out / "training", progress=False)
    save_lora(judge.model, LoraSpec.from_recipe(config.lora), out / "lora", base=str(tiny_llm))
    (out / "judge.yaml").write_text(yaml.safe_dump({"task": "judge", "base_llm": str(tiny_llm)}))
    return before, judge, asked, report, out, config


def test_questions_list_the_retrievers_top_c_in_its_order(retriever):
    from gen_linker.judge_training import questions

    mentions = [Mention.from_dict(r) for r in TEST]
    asked = questions(KB, retriever, mentions, 3)
    for q, cands in zip(asked, retriever.retrieve(mentions, 3)):
        assert q.entity_ids == [c.entity_id for c in cands]
        assert q.gold == (q.entity_ids.index(q.mention.gold) if q.mention.gold in q.entity_ids else None)
        assert f"A. {KB.get(q.entity_ids[0]).name}" in q.text


def test_training_the_judge_lowers_its_loss_and_changes_its_answers(trained):
    from gen_linker.judge_training import alone_top1

    before, judge, asked, report, _, _ = trained
    after = judge.letter_logprobs([q.text for q in asked], [len(q.entity_ids) for q in asked])
    assert report.loss_curve[-1] < report.loss_curve[0]
    assert any(int(np.argmax(a)) != int(np.argmax(b)) for a, b in zip(before, after))
    gold_before = np.mean([b[q.gold] for b, q in zip(before, asked)])
    gold_after = np.mean([a[q.gold] for a, q in zip(after, asked)])
    assert gold_after > gold_before
    assert report.dev_curve[0][0] == 0 and report.dev_curve[-1][1] == alone_top1(judge, asked)
    assert report.dev_curve[-1][1] > report.dev_curve[0][1]      # on what it was trained on: it learned


def test_a_finished_run_resumes_from_its_checkpoint_without_training_again(trained, tiny_llm):
    from gen_linker.judge import LLMJudge
    from gen_linker.judge_training import train_judge

    _, judge, asked, report, out, config = trained
    fresh = LLMJudge(str(tiny_llm), dtype="float32")
    again = train_judge(fresh, asked, (), config, out / "training", progress=False)
    assert again.steps == report.steps and again.loss_curve == report.loss_curve
    texts, sizes = [q.text for q in asked], [len(q.entity_ids) for q in asked]
    for a, b in zip(fresh.letter_logprobs(texts, sizes), judge.letter_logprobs(texts, sizes)):
        assert np.allclose(a, b, atol=1e-5)                        # the checkpoint's weights


def test_the_saved_adapter_reloads_to_the_same_answers_and_llm_choice_links_by_them(trained, tiny_llm, tiny_bert):
    from gen_linker import load_linker
    from gen_linker.judge import LLMJudge

    _, judge, asked, _, out, _ = trained
    texts, sizes = [q.text for q in asked], [len(q.entity_ids) for q in asked]
    loaded = LLMJudge(str(tiny_llm), dtype="float32", adapter=str(out))
    for a, b in zip(loaded.letter_logprobs(texts, sizes), judge.letter_logprobs(texts, sizes)):
        assert np.allclose(a, b, atol=1e-4)
    spec = {"linker": "llm-choice", "candidates": {"encoder": str(tiny_bert), "encoder_dtype": "float32"},
            "backend": {"dtype": "float32"}, "top_k": 6,
            "rerank": {"judge": str(tiny_llm), "judge_adapter": str(out), "judge_candidates": 4}}
    mentions = [q.mention for q in asked]
    results = load_linker(KB, spec).link(mentions)
    for q, r, lp in zip(asked, results, loaded.letter_logprobs(texts, sizes)):
        assert r.entity_id == q.entity_ids[int(np.argmax(lp))]
        assert [c.entity_id for c in r.candidates[:4]] == [q.entity_ids[i] for i in np.argsort(-lp, kind="stable")]
        assert all(a.score >= b.score for a, b in zip(r.candidates, r.candidates[1:])) and len(r.candidates) == 6
        assert np.isclose(r.confidence, np.exp(lp.max()))


def test_a_missing_or_corrupt_judge_adapter_is_named(trained, tiny_llm, tmp_path):
    import shutil

    from gen_linker.judge import LLMJudge

    out = trained[4]
    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    (missing / "judge.yaml").unlink()
    with pytest.raises(GenLinkerError, match="judge.yaml is missing"):
        LLMJudge(str(tiny_llm), dtype="float32", adapter=str(missing))
    from gen_linker import load_linker

    with pytest.raises(GenLinkerError, match="judge.yaml is missing"):     # before any model loads
        load_linker(KB, {"linker": "llm-choice", "rerank": {"judge": str(tiny_llm), "judge_adapter": str(missing)}})
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / "lora" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(GenLinkerError, match="adapter_model.safetensors cannot be loaded"):
        LLMJudge(str(tiny_llm), dtype="float32", adapter=str(corrupt))


def test_llm_choice_without_a_judge_says_what_it_needs(tiny_bert):
    from gen_linker import load_linker
    from gen_linker.spec import SpecError

    with pytest.raises(SpecError, match="rerank.judge"):
        load_linker(KB, {"linker": "llm-choice", "candidates": {"encoder": str(tiny_bert)}})


def test_the_judge_recipe_trains_and_writes_a_card_with_its_learning_curve(tiny_llm, tiny_bert, tmp_path, capsys):
    from gen_linker.cli import main

    write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    write_jsonl(tmp_path / "train.jsonl", TRAIN)
    write_jsonl(tmp_path / "dev.jsonl", TEST)
    recipe = tmp_path / "judge.yaml"
    recipe.write_text(yaml.safe_dump({"task": "judge", "kb": "kb.jsonl", "train": "train.jsonl", "dev": "dev.jsonl",
                                      "llm": str(tiny_llm), "encoder": str(tiny_bert), "dtype": "float32",
                                      "output": "out", "candidates": 4, "mentions": 4, "lr": 1e-3, "batch_size": 2,
                                      "dev_every": 1, "lora": {"r": 2, "alpha": 4, "targets": ["q_proj"]}}))
    assert main(["train", "--recipe", str(recipe), "--no-progress"]) == 0
    card = yaml.safe_load((tmp_path / "out" / "judge.yaml").read_text())
    assert card["task"] == "judge" and card["questions"]["total"] <= 4 and card["report"]["steps"] >= 1
    assert [n for n, _ in card["report"]["dev_curve"]] == [2 * i for i in range(card["report"]["steps"] + 1)]
    assert (tmp_path / "out" / "lora" / "adapter_model.safetensors").exists()
    assert 0.0 <= card["dev_baselines_top1"]["bm25"] <= 1.0 and 0.0 <= card["dev_baselines_top1"]["retrieval"] <= 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"task": "judge", "kb": "kb.jsonl", "train": "train.jsonl", "llm": str(tiny_llm),
                                   "hard_shares": 0.5}))
    assert main(["train", "--recipe", str(bad)]) != 0
    assert "unknown key(s) hard_shares" in capsys.readouterr().err


def test_a_killed_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tiny_llm, retriever, tmp_path):
    from dataclasses import replace

    from gen_linker.judge import LLMJudge
    from gen_linker.judge_training import JudgeTrainConfig, questions, train_judge

    config = JudgeTrainConfig(candidates=4, epochs=2, lr=3e-3, batch_size=2, checkpoint_every=1,
                              lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]})
    asked = [q for q in questions(KB, retriever, [Mention.from_dict(r) for r in TRAIN], 4) if q.gold is not None]
    whole = LLMJudge(str(tiny_llm), dtype="float32")
    done = train_judge(whole, asked, (), config, tmp_path / "whole", progress=False)
    killed = train_judge(LLMJudge(str(tiny_llm), dtype="float32"), asked, (), replace(config, max_minutes=0.0),
                         tmp_path / "run", progress=False)
    assert killed.stopped_early and killed.steps == 1 < done.steps
    with pytest.raises(GenLinkerError, match=r"other settings \(lr\)"):
        train_judge(LLMJudge(str(tiny_llm), dtype="float32"), asked, (), replace(config, lr=1e-2), tmp_path / "run",
                    progress=False)
    resumed = LLMJudge(str(tiny_llm), dtype="float32")
    report = train_judge(resumed, asked, (), config, tmp_path / "run", progress=False)
    assert report.steps == done.steps and not report.stopped_early
    texts, sizes = [q.text for q in asked], [len(q.entity_ids) for q in asked]
    for a, b in zip(resumed.letter_logprobs(texts, sizes), whole.letter_logprobs(texts, sizes)):
        assert np.allclose(a, b, atol=1e-4)


def test_an_adapter_of_another_llm_is_refused_and_a_saved_linker_carries_its_adapter(trained, tiny_llm, tiny_bert,
                                                                                    tmp_path):
    import shutil

    from gen_linker import load_linker
    from gen_linker.judge import LLMJudge
    from gen_linker.loader import save_linker
    from gen_linker.spec import LinkerSpec, SpecError

    out = trained[4]
    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "judge.yaml").write_text(yaml.safe_dump({"task": "judge", "base_llm": "some-other-llm"}))
    with pytest.raises(GenLinkerError, match="trained on some-other-llm"):
        LLMJudge(str(tiny_llm), dtype="float32", adapter=str(other))
    with pytest.raises(SpecError, match="judge_adapter needs rerank.judge"):
        LinkerSpec.from_dict({"linker": "llm-choice", "rerank": {"judge_adapter": str(out)}})
    spec = LinkerSpec.from_dict({"linker": "llm-choice", "candidates": {"encoder": str(tiny_bert), "encoder_dtype": "float32"},
                                 "backend": {"dtype": "float32"},
                                 "rerank": {"judge": str(tiny_llm), "judge_adapter": str(out), "judge_candidates": 4}})
    folder = tmp_path / "saved"
    save_linker(spec, folder)
    assert (folder / "judge_adapter" / "judge.yaml").exists() and (folder / "judge_adapter" / "lora").is_dir()
    mentions = [Mention.from_dict(r) for r in TEST]
    assert [r.entity_id for r in load_linker(KB, folder).link(mentions)] == \
        [r.entity_id for r in load_linker(KB, spec).link(mentions)]


def test_llm_choice_asks_fewer_options_when_fewer_are_retrieved_and_honours_the_nil_threshold(trained, tiny_llm,
                                                                                              tiny_bert):
    from gen_linker import load_linker

    small = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES[:3]])     # 3 entities, 4 options asked
    spec = {"linker": "llm-choice", "candidates": {"encoder": str(tiny_bert), "encoder_dtype": "float32"},
            "backend": {"dtype": "float32"}, "rerank": {"judge": str(tiny_llm), "judge_candidates": 4}}
    mentions = [Mention.from_dict(r) for r in TEST]
    results = load_linker(small, spec).link(mentions)
    assert all(1 <= len(r.candidates) <= 3 and r.entity_id in {"Q1", "Q2", "Q3"} for r in results)
    assert all(np.isclose(sum(np.exp(c.score) for c in r.candidates), 1.0, atol=1e-5) for r in results)
    threshold = float(np.median([r.confidence for r in results]))
    nil = load_linker(small, {**spec, "nil_threshold": threshold}).link(mentions)
    for r, n in zip(results, nil):
        assert (n.entity_id is None) == (r.confidence < threshold)
        assert n.entity_id in (None, r.entity_id)
    assert any(n.entity_id is None for n in nil) and any(n.entity_id for n in nil)


def test_judge_adapter_alone_names_its_judge_from_its_card(trained, tiny_llm, tmp_path):
    import argparse
    import shutil

    from gen_linker.linker_flags import add_linker_flags, spec_from_args

    parser = argparse.ArgumentParser()
    add_linker_flags(parser)
    out = trained[4]
    spec = spec_from_args(parser.parse_args(["--linker", "llm-choice", "--judge-adapter", str(out)]))
    assert spec.rerank.judge == str(tiny_llm) and spec.rerank.judge_adapter == str(out)
    given = spec_from_args(parser.parse_args(["--linker", "llm-choice", "--judge-adapter", str(out),
                                              "--judge", "another-llm"]))
    assert given.rerank.judge == "another-llm"                        # --judge given: kept (checked at load)
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / "judge.yaml").write_text(yaml.safe_dump({"task": "judge"}))
    with pytest.raises(GenLinkerError, match="names no base_llm"):
        spec_from_args(parser.parse_args(["--linker", "llm-choice", "--judge-adapter", str(bare)]))
    (bare / "judge.yaml").unlink()
    with pytest.raises(GenLinkerError, match="judge.yaml is missing"):
        spec_from_args(parser.parse_args(["--linker", "llm-choice", "--judge-adapter", str(bare)]))

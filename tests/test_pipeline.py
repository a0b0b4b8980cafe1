"""The generative-with-fallback pipeline: decision rules on constructed cases, DIM reranking,
margin tuning, and `--linker pipeline` end to end on the tiny LLM + a DIM trained here."""
import json
import math

import pytest

from conftest import ENTITIES, TEST, TRAIN, write_jsonl
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.pipeline import (AMBIGUOUS, LOW_MARGIN, NO_NAME, PipelineLinker, fallback_reason,
                                         name_margin, tune_margin)
from gen_linker.schema import Candidate, Entity, LinkResult, Mention

KB = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])


def generated(mid, *names_scores):
    cands = [Candidate(eid, name, score) for name, score in names_scores for eid in KB.ids_for_name(name)]
    best = cands[0] if cands else None
    return LinkResult(mid, best and best.entity_id, best and best.name, best and best.score, cands)


def test_decision_rules_on_constructed_cases():
    nil = generated("a")
    assert fallback_reason(nil, KB, 0.0) == NO_NAME
    paris = generated("b", ("Paris", -0.5), ("Paris Hilton", -4.0))       # two entities are named Paris
    assert fallback_reason(paris, KB, 0.0) == AMBIGUOUS
    close = generated("c", ("Noel Harrison", -1.0), ("Stefanie Powers", -1.3))
    assert name_margin(close) == pytest.approx(0.3)
    assert fallback_reason(close, KB, 0.5) == LOW_MARGIN
    assert fallback_reason(close, KB, 0.2) is None
    alone = generated("d", ("Francis Condon", -2.0))
    assert name_margin(alone) == math.inf and fallback_reason(alone, KB, 100.0) is None


@pytest.fixture(scope="module")
def dim_folder(tmp_path_factory):
    from gen_linker.cli import main

    tmp = tmp_path_factory.mktemp("dim")
    kb_file = write_jsonl(tmp / "kb.jsonl", ENTITIES)
    train_file = write_jsonl(tmp / "train.jsonl", TRAIN + TEST)
    assert main(["train-dim", "--kb", str(kb_file), "--train", str(train_file), "--output", str(tmp / "dim"),
                 "--epochs", "20", "--batch-size", "4", "--no-progress"]) == 0
    return tmp / "dim"


@pytest.mark.real_models
def test_dim_decides_only_where_a_rule_fires(dim_folder):
    from gen_linker.linkers.dim import DIMLinker

    dim = DIMLinker.from_pretrained(dim_folder, KB)
    mentions = [Mention.from_dict(r) for r in TEST]
    gen = [generated("m1", ("Antoine Griezmann", -0.1), ("Paris", -5.0)),       # stands
           generated("m2"),                                                      # nothing came out
           generated("m3", ("Noel Harrison", -1.0), ("Stefanie Powers", -1.1)),  # unsure
           generated("m4", ("Milwaukee Bucks", -0.2)),                           # stands
           generated("m5", ("Paris", -0.3))]                                     # ambiguous
    pipe = PipelineLinker(KB, None, dim, margin=0.5)
    out = pipe.decide(mentions, gen)
    assert [r.linker for r in out] == ["generative", "dim", "dim", "generative", "dim"]
    assert [r.fallback for r in out] == [None, NO_NAME, LOW_MARGIN, None, AMBIGUOUS]
    assert out[0].entity_id == "Q9" and out[3].entity_id == "Q8"
    # DIM ranked the generative beams together with the retrieved candidates
    assert {"Q5", "Q6"} <= {c.entity_id for c in out[4].candidates}
    assert all(r.entity_id in KB for r in out)
    assert json.loads(json.dumps(out[1].to_dict()))["fallback"] == NO_NAME

    best, scores = tune_margin(pipe, mentions, gen, grid=[0.0, 0.05, 0.5])
    assert set(scores) == {0.0, 0.05, 0.5} and scores[best] == max(scores.values())
    best, scores = tune_margin(pipe, mentions, gen)          # default grid: 0 up to past every margin
    finite = [name_margin(g) for g in gen if name_margin(g) != float("inf")]
    assert min(scores) == 0.0 and (not finite or max(scores) > max(finite))
    assert scores[best] == max(scores.values())


@pytest.mark.real_models
def test_cli_pipeline_says_who_decided(tiny_llm, dim_folder, tmp_path):
    from gen_linker.cli import main

    kb_file = write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    test_file = write_jsonl(tmp_path / "test.jsonl", TEST)
    out = tmp_path / "out.jsonl"
    assert main(["link", "--linker", "pipeline", "--dim", str(dim_folder), "--kb", str(kb_file),
                 "--input", str(test_file), "--output", str(out), "--llm", str(tiny_llm), "--dtype", "float32",
                 "--beams", "3", "--margin", "1.0", "--no-progress"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [t["id"] for t in TEST]
    for r in rows:
        assert r["linker"] in ("generative", "dim")
        assert (r["linker"] == "dim") == (r.get("fallback") in (NO_NAME, AMBIGUOUS, LOW_MARGIN))
        assert r["entity_id"] in {e["id"] for e in ENTITIES}
    assert main(["link", "--linker", "pipeline", "--kb", str(kb_file), "--input", str(test_file),
                 "--output", str(tmp_path / "x.jsonl"), "--llm", str(tiny_llm)]) == 1   # no --dim

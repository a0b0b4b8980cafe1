"""DIM: shapes, N-pair loss, training, save/load, candidates, and the CLI on tiny instances
(the packaged MiniLM as text encoder, a frozen random CLIP for images)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ENTITIES, TEST, TRAIN, write_jsonl
from gen_linker import datasets
from gen_linker.candidates import CandidateRetriever, recall_at
from gen_linker.dim_training import DIMTrainConfig, batch_loss, train_dim
from gen_linker.kb import KnowledgeBase
from gen_linker.linkers.dim import DIMConfig, DIMFeaturizer, DIMLinker, DIMModel, MentionFeatures, npair_loss
from gen_linker.schema import Entity, Mention
from gen_linker.vision import VisionEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from synthetic_mel import generate  # noqa: E402

pytestmark = pytest.mark.real_models   # the packaged MiniLM


def toy_kb() -> KnowledgeBase:
    return KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])


def test_npair_loss_matches_a_hand_computed_value():
    pos = torch.tensor([2.0, 0.5])
    neg = torch.tensor([[1.0, 0.0], [0.5, 3.0]])
    want = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(0) + math.exp(2.5))) / 2
    assert npair_loss(pos, neg).item() == pytest.approx(want, abs=1e-6)
    mask = torch.tensor([[True, False], [True, True]])     # drop the second negative of the first row
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0) + math.exp(2.5))) / 2
    assert npair_loss(pos, neg, mask).item() == pytest.approx(want, abs=1e-6)


def test_forward_and_backward_shapes_with_and_without_images_and_experts():
    torch.manual_seed(0)
    model = DIMModel(DIMConfig(text_dim=12, image_dim=6, dim=8, heads=2))
    text, image, expert = torch.randn(5, 12), torch.randn(5, 6), torch.randn(5, 12)
    has_image = torch.tensor([True, False, True, False, True])
    m = model.mentions(text, image, has_image, expert, torch.ones(5, dtype=torch.bool))
    assert m.shape == (5, 8) and torch.allclose(m.norm(dim=-1), torch.ones(5))
    assert model.mentions(text).shape == (5, 8)               # no image, no expert at all
    e = model.entities(torch.randn(7, 12))
    assert e.shape == (7, 8) and model.scores(m, e).shape == (5, 7)
    # an absent image is the learned "no image" vector: the image's content does not matter
    other = image.clone()
    other[:2] += 100                                            # row 0 has an image, row 1 has none
    m2 = model.mentions(text, other, has_image, expert, torch.ones(5, dtype=torch.bool))
    assert torch.allclose(m[1], m2[1]) and not torch.allclose(m[0], m2[0])
    feats = MentionFeatures(text, image, has_image)
    loss = batch_loss(model, feats, torch.randn(7, 12), torch.tensor([0, 1, 1, 3, 4]),
                      torch.tensor([[2, 5], [6, -1], [0, 2], [-1, -1], [1, 4]]))
    loss.backward()
    assert loss.item() > 0
    # without expert text only the "no expert" vector stands in for it
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("expert_proj"))


def test_candidates_fuse_bm25_and_dense_and_report_recall():
    kb = toy_kb()
    mentions = [Mention.from_dict(r) for r in TEST]
    retriever = CandidateRetriever(kb)
    cands = retriever.retrieve(mentions, k=5)
    assert all(len(c) == 5 for c in cands)
    assert cands[1][0].entity_id == "Q4"                     # "Francis Condon": BM25 and dense agree
    # "Bucks" shares a word only with "Milwaukee Bucks"; dense adds more entities below it
    assert cands[3][0].entity_id == "Q8"
    r = recall_at(cands, mentions, (1, 5))
    assert r[1] <= r[5] and r[5] == 1.0


def test_dim_trains_saves_loads_and_uses_images(tmp_path):
    """Synthetic benchmark: entities of a group share a name, only images tell them apart."""
    root = tmp_path / "bench"
    generate(root, groups=4, per_group=3, mentions=10, seed=0)
    kb = KnowledgeBase.from_jsonl(root / "entities.jsonl")
    train, dev, test = (datasets.load(root / f"{s}.jsonl").valid for s in ("train", "dev", "test"))
    config = DIMTrainConfig(epochs=30, lr=3e-3, batch_size=16, hard_negatives=4, dim=64, heads=2)
    top1 = {}
    for name, vision in (("text", None), ("images", VisionEncoder.from_config(seed=0))):
        featurizer = DIMFeaturizer(None, vision, root, cache_dir=root / "cache")
        model, report = train_dim(kb, train, dev, featurizer, config, tmp_path / name / "training", progress=False)
        assert report.epoch_loss[-1] < report.epoch_loss[0]
        linker = DIMLinker(kb, model, featurizer, num_candidates=12, top_k=3)
        results = linker.link(test)
        top1[name] = sum(r.entity_id == m.gold for r, m in zip(results, test)) / len(test)
    assert top1["text"] <= 0.45
    print(top1)
    assert top1["images"] >= top1["text"] + 0.25, top1

    # save / load round trip: same scores
    model.save(tmp_path / "dim", {"vision": "random:0", "text_encoder": None})
    again = DIMLinker.from_pretrained(tmp_path / "dim", kb, image_root=root, num_candidates=12, top_k=3)
    a, b = linker.link(test[:4]), again.link(test[:4])
    assert [[(c.entity_id, round(c.score, 4)) for c in r.candidates] for r in a] == \
           [[(c.entity_id, round(c.score, 4)) for c in r.candidates] for r in b]


def test_cli_train_dim_then_link_and_resume(tmp_path):
    from gen_linker.cli import main

    kb_file = write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    train_file = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test_file = write_jsonl(tmp_path / "test.jsonl", TEST + [{"id": "bad", "text": "no mention here"}])
    args = ["train-dim", "--kb", str(kb_file), "--train", str(train_file), "--dev", str(train_file),
            "--output", str(tmp_path / "dim"), "--epochs", "3", "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    card = (tmp_path / "dim" / "dim.yaml").read_text()
    assert "dev_top1" in card and "epoch_loss" in card
    # resuming with more epochs continues after the three finished ones
    assert main(args[:-3] + ["--epochs", "4", "--no-progress"]) == 0
    state = json.loads((tmp_path / "dim" / "training" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 4 and len(state["report"]["epoch_loss"]) == 4
    out = tmp_path / "out.jsonl"
    assert main(["link", "--linker", "dim", "--dim", str(tmp_path / "dim"), "--kb", str(kb_file),
                 "--input", str(test_file), "--output", str(out), "--no-progress"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["m1", "m2", "m3", "m4", "m5", "bad"]
    assert all(r["linker"] == "dim" and r["entity_id"] in {e["id"] for e in ENTITIES} for r in rows[:5])
    assert "error" in rows[5]
    fused = tmp_path / "fused.jsonl"
    assert main(["link", "--linker", "dim", "--dim", str(tmp_path / "dim"), "--kb", str(kb_file), "--fuse-retrieval",
                 "--input", str(test_file), "--output", str(fused), "--no-progress"]) == 0
    fused_rows = [json.loads(x) for x in fused.read_text().splitlines()]
    assert all(0 < r["score"] <= 2 / 61 for r in fused_rows[:5])         # reciprocal-rank scores
    assert main(["link", "--linker", "dim", "--kb", str(kb_file), "--input", str(test_file),
                 "--output", str(tmp_path / "x.jsonl")]) == 1          # no --dim: a clear error


def test_rank_fusion_by_hand():
    from gen_linker.linkers.dim import fuse_rankings
    from gen_linker.schema import Candidate

    a, b, c = (Candidate(x, x, 0.0) for x in "ABC")
    fused = fuse_rankings([a, b, c], [c, b])
    assert [x.entity_id for x in fused] == ["C", "B", "A"]          # 1/63+1/61 > 2/62 > 1/61
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)


def test_dim_with_a_clip_text_tower(tiny_llm, tmp_path):
    """`--encoder clip:FOLDER`: a tiny random CLIP (built from configs, the tiny tokenizer) as
    DIM's text encoder, through train-dim and link; retrieval keeps the packaged MiniLM."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from gen_linker.cli import main
    from gen_linker.encoders import ClipTextEncoder, text_encoder

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=64, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id or 0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    torch.manual_seed(0)
    clip = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)).save_pretrained(clip)
    tok.save_pretrained(clip)
    enc = text_encoder(f"clip:{clip}")
    assert isinstance(enc, ClipTextEncoder) and enc.dim == 24
    emb = enc.encode(["Noel Harrison", "a much longer text " * 40])        # cut to the context, normalised
    assert emb.shape == (2, 24) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)

    kb_file = write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    train_file = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test_file = write_jsonl(tmp_path / "test.jsonl", TEST)
    assert main(["train-dim", "--kb", str(kb_file), "--train", str(train_file), "--output", str(tmp_path / "dim"),
                 "--encoder", f"clip:{clip}", "--epochs", "2", "--batch-size", "4", "--no-progress"]) == 0
    model, card = DIMModel.load(tmp_path / "dim")
    assert model.config.text_dim == 24 and card["text_encoder"] == f"clip:{clip}"
    out = tmp_path / "out.jsonl"
    assert main(["link", "--linker", "dim", "--dim", str(tmp_path / "dim"), "--kb", str(kb_file),
                 "--input", str(test_file), "--output", str(out), "--no-progress"]) == 0
    assert all(json.loads(x)["entity_id"] in {e["id"] for e in ENTITIES} for x in out.read_text().splitlines())
